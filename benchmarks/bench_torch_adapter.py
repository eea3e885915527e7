"""One training step (forward, backward, optimizer) of resnet18 at 128x128, B = 48, CPU:
the wrapped model with TFA (4 pairs) and FLSA on, against the same step unwrapped."""

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from elta_core.adapters.torch import ELTAWrapper  # noqa: E402

BATCH, SIZE = 48, 128


def _setup(wrapped: bool):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    counts = torch.randint(1, 30, (BATCH, 10)).float()
    y = counts / counts.sum(1, keepdim=True)
    if wrapped:
        wrapper = ELTAWrapper(model, "fc", num_pairs=4, flsa_weight=1.0, seed=0)

        def loss():
            return wrapper(x, y).loss
    else:
        values = torch.arange(1, 11.0)

        def loss():  # the user's own loop: EMD on the softmax, nothing else
            cdf = torch.cumsum(torch.softmax(model(x), 1), 1) - torch.cumsum(y, 1)
            return cdf.pow(2).mean(1).sqrt().mean() + 0 * values.sum()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step


@pytest.mark.parametrize("name", ["plain model (baseline)", "ELTAWrapper, TFA + FLSA"])
def test_training_step_overhead(benchmark, name):
    torch.set_num_threads(torch.get_num_threads())
    step = _setup(wrapped=name.startswith("ELTA"))
    benchmark.group = f"resnet18 train step, {SIZE}x{SIZE}, B={BATCH}, CPU"
    benchmark.pedantic(step, rounds=12, warmup_rounds=2)


def test_training_step_overhead_interleaved(benchmark):
    """Both steps alternate within each round, so machine drift hits them equally; the
    medians and their ratio go to extra_info (the timed value is the pair)."""
    import statistics
    import time

    plain, wrapped = _setup(wrapped=False), _setup(wrapped=True)
    times = {"plain": [], "wrapped": []}

    def pair():
        for name, step in (("plain", plain), ("wrapped", wrapped)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    benchmark.group = f"resnet18 train step, {SIZE}x{SIZE}, B={BATCH}, CPU, interleaved"
    benchmark.pedantic(pair, rounds=15, warmup_rounds=2)
    medians = {name: statistics.median(values[2:]) for name, values in times.items()}
    benchmark.extra_info.update(
        median_plain_s=medians["plain"], median_wrapped_s=medians["wrapped"],
        overhead=medians["wrapped"] / medians["plain"] - 1,
    )


@pytest.mark.parametrize("name", ["plain step", "ELTAWrapper step"])
def test_wrapper_own_work_on_a_trivial_model(benchmark, name):
    """The wrapper's own cost, isolated: a linear head on 512-wide features, B = 48."""
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(512, 10))
    x = torch.randn(BATCH, 512)
    counts = torch.randint(1, 30, (BATCH, 10)).float()
    y = counts / counts.sum(1, keepdim=True)
    wrapper = ELTAWrapper(model, "1", num_pairs=4, seed=0)

    def plain():
        gap = torch.cumsum(torch.softmax(model(x), 1), 1) - torch.cumsum(y, 1)
        gap.pow(2).mean(1).sqrt().mean().backward()

    def wrapped():
        wrapper(x, y).loss.backward()

    benchmark.group = "wrapper's own work: linear head, B=48, D=512"
    benchmark.pedantic(wrapped if name.startswith("ELTA") else plain, rounds=200, warmup_rounds=10)


def test_cost_of_the_checks_interleaved(benchmark, monkeypatch):
    """The wrapper's per-step checks (labels: finite, PMFs, scale; output: levels; losses:
    finite) against the same step with them switched off, alternating within each round.
    torch.set_num_threads(1): on 2 shared cores the thread pool stalls tiny ops."""
    import statistics
    import time

    import elta_core.step as step_module

    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(512, 10))
    x = torch.randn(BATCH, 512)
    counts = torch.randint(1, 30, (BATCH, 10)).float()
    y = counts / counts.sum(1, keepdim=True)
    wrapper = ELTAWrapper(model, "1", num_pairs=4, seed=0)
    checks = {"require": step_module._require, "finite": step_module.raise_if_not_finite}
    times = {"checks on": [], "checks off": []}

    def step(on: bool):
        monkeypatch.setattr(step_module, "_require", checks["require"] if on else (lambda *a, **k: None))
        monkeypatch.setattr(step_module, "raise_if_not_finite", checks["finite"] if on else (lambda terms: None))
        start = time.perf_counter()
        wrapper(x, y).loss.backward()
        times["checks on" if on else "checks off"].append(time.perf_counter() - start)

    def pair():
        step(False)
        step(True)

    benchmark.group = "cost of the checks: linear head, B=48, D=512, 1 thread"
    benchmark.pedantic(pair, rounds=400, warmup_rounds=20)
    medians = {name: statistics.median(values[20:]) for name, values in times.items()}
    benchmark.extra_info.update(median_on_ms=medians["checks on"] * 1e3, median_off_ms=medians["checks off"] * 1e3,
                                overhead=medians["checks on"] / medians["checks off"] - 1)
