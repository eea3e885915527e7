"""The cost of each method's training step (forward, backward, optimizer) against the
baseline step, in the same run: every round runs each method's step once, in turn, so
that machine drift hits them alike; the medians and the ratios to the baseline go to
``extra_info`` (``benchmarks/report.py`` does not read them; README.md quotes them).

Two settings: a linear head on 512-wide features, B = 64 (the methods' own work,
isolated; one thread, as tiny ops stall on a busy 2-core machine's thread pool), and
resnet18 at 128 x 128, B = 32 (a real step; the default threads).
"""

from __future__ import annotations

import statistics
import time

import pytest

torch = pytest.importorskip("torch")

from elta_core.adapters.torch import ELTAWrapper  # noqa: E402
from elta_core.adapters.torch import peers as P  # noqa: E402

METHODS = {
    "baseline": dict(tfa=False, flsa_weight=0.0),
    "tfa": dict(num_pairs=0.25, flsa_weight=0.0),
    "flsa": dict(tfa=False, flsa_weight=1.0),
    "elta (tfa+flsa)": dict(num_pairs=0.25, flsa_weight=1.0),
    "lds": dict(tfa=False, flsa_weight=0.0, peers=lambda s: [P.LDS(s)]),
    "fds": dict(tfa=False, flsa_weight=0.0, peers=lambda s: [P.FDS(s)]),
    "ranksim": dict(tfa=False, flsa_weight=0.0, peers=lambda s: [P.RankSim()]),
    "cmixup": dict(tfa=False, flsa_weight=0.0, peers=lambda s: [P.CMixup()]),
    "bmse": dict(tfa=False, flsa_weight=0.0, peers=lambda s: [P.BalancedMSE()]),
}


def _labels(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.randint(1, 30, (batch, 10), generator=torch.Generator().manual_seed(1)).float()
    distributions = counts / counts.sum(1, keepdim=True)
    return distributions, distributions @ torch.arange(1, 11.0)


def _step(make_model, head: str, x: torch.Tensor, method: str):
    torch.manual_seed(0)
    labels, scores = _labels(x.shape[0])
    options = dict(METHODS[method])
    peers = options.pop("peers", lambda s: [])(scores)
    wrapper = ELTAWrapper(make_model(), head, seed=0, peers=peers, **options)
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        wrapper(x, labels).loss.backward()
        optimizer.step()

    step()
    wrapper.end_epoch()  # FDS: statistics exist, so the timed steps calibrate
    return step


def _interleaved(benchmark, steps: dict, rounds: int, group: str) -> None:
    times: dict[str, list[float]] = {name: [] for name in steps}

    def each_once():
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    benchmark.group = group
    benchmark.pedantic(each_once, rounds=rounds, warmup_rounds=1)
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    benchmark.extra_info.update({f"median_s[{name}]": value for name, value in medians.items()})
    benchmark.extra_info.update({f"ratio[{name}]": value / medians["baseline"] for name, value in medians.items()})


def test_step_cost_per_method_linear_head(benchmark):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(64, 512)
        make = lambda: torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(512, 10))  # noqa: E731
        steps = {method: _step(make, "1", x, method) for method in METHODS}
        _interleaved(benchmark, steps, rounds=200, group="train step per method, linear head 512 -> 10, B=64, 1 thread")
    finally:
        torch.set_num_threads(threads)


def test_step_cost_per_method_resnet18(benchmark):
    torchvision = pytest.importorskip("torchvision")
    x = torch.randn(32, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    make = lambda: torchvision.models.resnet18(weights=None, num_classes=10)  # noqa: E731
    steps = {method: _step(make, "fc", x, method) for method in METHODS}
    _interleaved(benchmark, steps, rounds=6, group="train step per method, resnet18 128x128, B=32, CPU")
