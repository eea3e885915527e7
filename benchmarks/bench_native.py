"""Native CPU kernels against torch eager and NumPy, in the same run.

- FLSA forward plus backward, B in {16, 48, 128, 512}, D in {256, 1024}: torch eager
  (elta_core's reference with autograd), NumPy (the loss and its closed-form gradient),
  and the native kernel (called on NumPy arrays, and through its torch autograd Function).
- The APDS grid search for N in {20,000, 255,000} with a 20 x 50 grid: the reference on
  NumPy and on torch, and the native accumulation.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from elta_core import apds, flsa, kernels  # noqa: E402
from elta_core.kernels import dispatch, native, torch_ops  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.native_available(), reason=str(kernels.native_available().reason))

FLSA_SHAPES = [(b, d) for d in (256, 1024) for b in (16, 48, 128, 512)]


def numpy_loss_and_grad(z, s):
    """The plain NumPy route: B x B matrices, gradient in closed form."""
    norms = np.sqrt(np.maximum((z * z).sum(1, keepdims=True), 1e-16))
    zh = z / norms
    u = (s - s.min()) / np.ptp(s)
    gap = zh @ zh.T - (1 - np.abs(u[:, None] - u[None, :]))
    size = len(z)
    g_hat = (4.0 / size**2) * (gap @ zh)
    grad = (g_hat - zh * (zh * g_hat).sum(1, keepdims=True)) / norms
    return (gap * gap).mean(), grad


@pytest.fixture(autouse=True)
def reference_only_unless_asked():
    kernels.set_native_enabled(False)  # the reference rows must not dispatch to native
    yield
    kernels.set_native_enabled(True)


def _flsa_inputs(size, width, dtype=np.float32):
    rng = np.random.default_rng(size * width)
    return rng.normal(size=(size, width)).astype(dtype), rng.uniform(1, 10, size).astype(dtype)


@pytest.mark.parametrize("size,width", FLSA_SHAPES)
@pytest.mark.parametrize("name", ["torch eager", "numpy", "native (numpy arrays)", "native (torch autograd Function)"])
def test_flsa_forward_backward(benchmark, name, size, width):
    z, s = _flsa_inputs(size, width)
    benchmark.group = f"native flsa fwd+bwd B={size} D={width} float32"
    if name == "numpy":
        benchmark(numpy_loss_and_grad, z, s)
        return
    if name == "native (numpy arrays)":
        benchmark(native.flsa_loss_and_grad, z, s)
        return
    features, scores = torch.from_numpy(z).requires_grad_(), torch.from_numpy(s)
    if name == "torch eager":
        fn = lambda: flsa.alignment_loss(features, scores, validate=False)  # noqa: E731
    else:
        fn = lambda: torch_ops.flsa_loss(features, scores)  # noqa: E731

    def step():
        features.grad = None
        fn().backward()

    benchmark(step)


def _grid_inputs(size):
    rng = np.random.default_rng(size)
    true = np.clip(rng.normal(5.4, 1.1, size), 1, 10)
    logits = -((np.arange(1, 11) - (true + rng.normal(0, 0.7, size))[:, None]) ** 2) / rng.uniform(0.5, 3, (size, 1))
    return logits.astype(np.float32), true.astype(np.float32)


GRID = dict(betas=tuple(np.linspace(0.5, 2.0, 20)), thresholds=tuple(np.linspace(0.3, 0.98, 50)), min_selected=1)


@pytest.mark.parametrize("size", [20_000, 255_000])
@pytest.mark.parametrize("name", ["reference, numpy", "reference, torch", "native"])
def test_grid_search(benchmark, name, size):
    logits, true = _grid_inputs(size)
    benchmark.group = f"native grid search N={size}, 20x50 grid"
    if name == "reference, torch":
        logits, true = torch.from_numpy(logits), torch.from_numpy(true)
    if name == "native":
        kernels.set_native_enabled(True)
        assert dispatch.select_impl("apds_grid", "numpy", logits, rows=size) == "native"
    benchmark.pedantic(apds.grid_search, args=(logits, true), kwargs=GRID, rounds=3 if size > 100_000 else 5, warmup_rounds=1)
