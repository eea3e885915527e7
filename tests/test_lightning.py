"""The wrapper inside a Lightning module: training steps, checkpoint save and reload, and
a 2-process CPU DDP run with FLSA on the global batch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")
pytest.importorskip("torchmetrics")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from elta_core.adapters.torch import ELTAWrapper  # noqa: E402
from elta_core.adapters.torch.metrics import AestheticsMetrics  # noqa: E402
from tests.torch_models import TwoLayer, distributions  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self, flsa_scope: str = "local", out_dir: str = ""):
        super().__init__()
        self.save_hyperparameters()
        self.wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0, flsa_scope=flsa_scope)
        self.plcc = AestheticsMetrics(key="plcc")

    def training_step(self, batch, batch_index):
        out = self.wrapper(*batch)
        self.log("flsa_loss", out.flsa_loss)
        self.plcc.update(out.predictions.softmax(1).detach(), out.labels)
        if self.hparams.out_dir:
            torch.save({"flsa": out.flsa_loss.detach(), "rows": out.features.shape[0]},
                       f"{self.hparams.out_dir}/rank{self.global_rank}_step{batch_index}.pt")
        return out.loss

    def on_train_epoch_end(self):
        self.log("plcc", self.plcc.compute())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(rows: int = 32):
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(rows, 4, generator=generator), distributions(rows)), batch_size=8)


def _trainer(**options):
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **options)


def test_training_steps_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    module = Module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = _trainer(max_steps=2, devices=1)
    trainer.fit(module, _loader())
    assert trainer.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    path = tmp_path / "module.ckpt"
    trainer.save_checkpoint(path)
    reloaded = Module.load_from_checkpoint(path)
    for a, b in zip(module.parameters(), reloaded.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_two_process_ddp_aligns_the_global_batch(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    # ddp_spawn hands results back through shared memory, which small containers lack.
    previous = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    monkeypatch.setattr(mp, "get_sharing_strategy", lambda: "file_system")
    torch.manual_seed(0)
    trainer = _trainer(max_steps=2, devices=2, strategy="ddp_spawn")
    trainer.fit(Module("global", str(tmp_path)), _loader())
    for step in (0, 1):
        ranks = [torch.load(tmp_path / f"rank{r}_step{step}.pt", weights_only=True) for r in (0, 1)]
        assert [r["rows"] for r in ranks] == [10, 10], "a batch of 8 and 2 TFA pairs per rank"
        assert torch.equal(ranks[0]["flsa"], ranks[1]["flsa"]), "FLSA on the same global batch on every rank"
    mp.set_sharing_strategy(previous)
