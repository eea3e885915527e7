"""The FLSA Gram form on the CPU against its floor, in the same run (torch, 1 thread:
the CI machine's 2 cores are shared): B = 65,536, D = 256, float32, forward + backward.

The floor is the form's two matmuls, ``Zh^T Zh`` (D x D) and ``Zh G`` (B x D); the rest
(normalising, the walk over the rows in score order, the normalisation's backward)
should cost less than half of them again. Rows: the two matmuls alone; elta_core native
(the default where the native kernels are built: a pass before the matmuls and the walk
after them); elta_core with the native kernels off (the backend-neutral walk, blocked
prefix sums). ``peak_extra_mib`` and ``times_features`` are in each result's ``extra_info``.
"""

import pytest

torch = pytest.importorskip("torch")

from benchmarks.bench_flsa import _step  # noqa: E402
from benchmarks.memory import clearing_gradient, peak_extra_mib  # noqa: E402
from elta_core import flsa, kernels  # noqa: E402

SIZE, WIDTH = 65_536, 256


def two_matmuls(features, scores):
    """The floor: ``Zh^T Zh`` and ``Zh G`` on the features, under no autograd."""
    with torch.no_grad():
        return features @ (features.T @ features)


def _loss(features, scores):
    return flsa.alignment_loss(features, scores, validate=False)


def _inputs():
    generator = torch.Generator().manual_seed(SIZE)
    features = torch.randn(SIZE, WIDTH, generator=generator, requires_grad=True)
    return features, torch.rand(SIZE, generator=generator) * 9 + 1


def _run(name, features, scores):
    if name == "two matmuls (the floor)":
        two_matmuls(features, scores)
        return
    native = kernels.native_enabled()
    kernels.set_native_enabled(name == "elta_core, native")
    try:
        _step(_loss, features, scores)
    finally:
        kernels.set_native_enabled(native)


NAMES = ["two matmuls (the floor)", "elta_core, native", "elta_core, native off"]


def prepared_step(name):
    """Inputs built, one measured call returned (for ``peak_extra_mib``)."""
    torch.set_num_threads(1)
    features, scores = _inputs()
    return clearing_gradient(lambda: _run(name, features, scores), features)


@pytest.mark.parametrize("name", NAMES)
def test_gram_form_against_its_floor(benchmark, name):
    if name == "elta_core, native" and not kernels.native_available():
        pytest.skip(str(kernels.native_available().reason))
    torch.set_num_threads(1)  # 2 shared cores: see benchmarks/README.md
    features, scores = _inputs()
    benchmark.group = f"flsa Gram form fwd+bwd against its two matmuls, B={SIZE} D={WIDTH}"
    peak = peak_extra_mib("benchmarks.bench_gram_floor:prepared_step", name)
    benchmark.extra_info["peak_extra_mib"] = peak
    benchmark.extra_info["times_features"] = round(peak / (features.numel() * 4 / 2**20), 2)
    benchmark.pedantic(_run, args=(name, features, scores), rounds=5, warmup_rounds=1)
