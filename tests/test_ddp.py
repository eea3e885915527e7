"""flsa_scope="global" under DDP (2 processes, gloo, CPU) equals one process on the whole batch."""

import socket

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from elta_core import flsa, losses, metrics  # noqa: E402
from elta_core.adapters.torch import ELTAWrapper  # noqa: E402
from elta_core.adapters.torch.distributed import gather_objects  # noqa: E402
from tests.torch_models import TwoLayer, distributions  # noqa: E402

WORLD = 2
PER_RANK = [6, 4]  # unequal batches: the gather pads and strips


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(sum(PER_RANK), 4, generator=generator)
    return x, distributions(sum(PER_RANK), seed=3)


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(TwoLayer())
        wrapper = ELTAWrapper(model, "module.fc", tfa=False, flsa_weight=1.0, flsa_scope="global")
        x, y = _data()
        start = sum(PER_RANK[:rank])
        rows = slice(start, start + PER_RANK[rank])
        out = wrapper(x[rows], y[rows])
        out.loss.backward()
        accumulator = metrics.MetricAccumulator()
        accumulator.update(model(x[rows]).detach().softmax(1), y[rows])
        synced = accumulator.sync(gather_objects)
        torch.save(
            {"flsa": out.flsa_loss.detach(), "grads": [p.grad for p in model.parameters()],
             "synced_plcc": torch.tensor(synced.compute()["plcc"]), "synced_count": torch.tensor(len(synced))},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_global_flsa_equals_single_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    torch.manual_seed(0)
    model = TwoLayer()
    x, y = _data()
    features = torch.tanh(model.backbone(x))
    expected_flsa = flsa.alignment_loss(features, y)
    # DDP averages the ranks' gradients: each rank's task loss is a mean over its own rows.
    task = sum(
        losses.emd(torch.softmax(model(x[s]), 1), y[s]) for s in (slice(0, 6), slice(6, 10))
    ) / WORLD
    (task + expected_flsa).backward()
    whole_set = metrics.evaluate(model(x).detach().softmax(1), y)["plcc"]
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert int(result["synced_count"]) == sum(PER_RANK), "the metric holds every rank's samples"
        assert float(result["synced_plcc"]) == pytest.approx(whole_set, rel=1e-5)  # float32 forwards
        torch.testing.assert_close(result["flsa"], expected_flsa.detach())
        for got, parameter in zip(result["grads"], model.parameters()):
            torch.testing.assert_close(got, parameter.grad, rtol=1e-5, atol=1e-6)
