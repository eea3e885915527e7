"""Native CPU kernels against the float64 reference, the dispatch, and the fallback."""

import os
import subprocess
import sys

import numpy as np
import pytest

from elta_core import apds, flsa, kernels
from elta_core.kernels import dispatch, native
from tests import reference as ref

needs_native = pytest.mark.skipif(not kernels.native_available(), reason=str(kernels.native_available().reason))
SHAPES = [(2, 3), (17, 4), (6, 16), (48, 32), (33, 257)]


def _reference_loss_and_grad(z, s):
    torch = pytest.importorskip("torch")
    features = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = flsa.alignment_loss(features, torch.tensor(s, dtype=torch.float64), form="direct")
    loss.backward()
    return loss.item(), features.grad.numpy()


@needs_native
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("size,width", SHAPES)
def test_flsa_kernel_matches_reference(size, width, dtype, tol, rng):
    z = rng.normal(size=(size, width))
    z[size // 2] = 0.0  # a zero vector
    s = np.round(rng.uniform(1, 10, size), 1)
    loss, grad = native.flsa_loss_and_grad(z.astype(dtype), s.astype(dtype))
    z_used, s_used = z.astype(dtype).astype(np.float64), s.astype(dtype).astype(np.float64)
    expected_loss, expected_grad = _reference_loss_and_grad(z_used, s_used)
    assert loss == pytest.approx(ref.alignment_loss(z_used, s_used), rel=tol, abs=tol)
    assert loss == pytest.approx(expected_loss, rel=tol, abs=tol)
    np.testing.assert_allclose(grad, expected_grad, rtol=tol * 10, atol=tol)
    assert grad.dtype == dtype


@needs_native
@pytest.mark.parametrize("z,s", [(np.ones((1, 4)), np.array([5.0])), (np.arange(12.0).reshape(6, 2), np.full(6, 5.5))])
def test_flsa_kernel_degenerate_batches(z, s):
    loss, grad = native.flsa_loss_and_grad(z, s)
    assert loss == 0.0 and np.all(grad == 0)


@needs_native
def test_dispatch_uses_the_kernel_only_where_it_wins(rng, monkeypatch):
    calls = []
    real = native.flsa_loss_and_grad
    monkeypatch.setattr(native, "flsa_loss_and_grad",
                        lambda *a, **k: calls.append((a[0].shape, a[2])) or real(*a, **k))
    small, large, tall = rng.normal(size=(16, 256)), rng.normal(size=(128, 256)), rng.normal(size=(512, 16))
    a = flsa.alignment_loss(small, rng.uniform(1, 10, 16))
    flsa.alignment_loss(large, rng.uniform(1, 10, 128))  # the direct form past the pair pass's size: BLAS
    flsa.alignment_loss(small, rng.uniform(1, 10, 16), form="direct")
    flsa.alignment_loss(small, rng.uniform(1, 10, 16), form="gram")  # the Gram form runs native at every size
    flsa.alignment_loss(tall, rng.uniform(1, 10, 512))  # "auto" is the Gram form for B > D
    assert calls == [((16, 256), "direct"), ((16, 256), "direct"), ((16, 256), "gram"), ((512, 16), "gram")]
    assert isinstance(a, np.floating)
    torch = pytest.importorskip("torch")
    assert dispatch.select_impl("flsa", "torch", torch.zeros(16, 256), rows=16, width=256) == "native"
    assert dispatch.select_impl("flsa", "torch", torch.zeros(48, 256), rows=48, width=256) == "reference"
    assert dispatch.select_impl("flsa", "torch", torch.zeros(512, 16), rows=512, width=16) == "native"


@needs_native
def test_checks_run_before_the_kernel(rng):
    z = rng.normal(size=(8, 4))
    z[2, 1] = np.nan
    with pytest.raises(ValueError, match="features: expected finite"):
        flsa.alignment_loss(z, rng.uniform(1, 10, 8))
    with pytest.raises(ValueError, match="scores: expected 8 rows"):
        flsa.alignment_loss(rng.normal(size=(8, 4)), rng.uniform(1, 10, 7))


@needs_native
def test_non_contiguous_inputs_are_not_misread(rng):
    wide = rng.normal(size=(12, 10))
    z = wide[:, ::2]  # strided view
    s = rng.uniform(1, 10, 24)[::2]
    loss, grad = native.flsa_loss_and_grad(z, s)
    expected, expected_grad = _reference_loss_and_grad(np.ascontiguousarray(z), np.ascontiguousarray(s))
    assert loss == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)
    logits = np.tile(rng.normal(size=(10, 20)).T[:, :10], (250, 1))  # Fortran-ordered, tiled past the row floor
    true = rng.uniform(1, 10, len(logits))
    fast, slow = _grid_pair(logits, true, thresholds=(0.2, 0.3))
    assert [c.num_selected for c in fast.table] == [c.num_selected for c in slow.table]


@needs_native
def test_torch_op_gradients_and_compile(rng):
    torch = pytest.importorskip("torch")
    from elta_core.kernels import native

    z = torch.tensor(rng.normal(size=(12, 5)), requires_grad=True)
    s = torch.tensor(np.round(rng.uniform(1, 10, 12), 1))
    native.flsa_loss(z, s).backward()
    expected_loss, expected_grad = _reference_loss_and_grad(z.detach().numpy(), s.numpy())
    np.testing.assert_allclose(z.grad.numpy(), expected_grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f: native.flsa_loss(f, s), (z.detach().clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda f: native.flsa_loss(f, s, "gram"), (z.detach().clone().requires_grad_(),))

    # Under torch.compile the dispatch picks the reference, which the compiler traces.
    compiled = torch.compile(lambda f, t: flsa.alignment_loss(f, t, validate=False) * 2, backend="aot_eager",
                             fullgraph=True)
    z.grad = None
    out = compiled(z, s)
    out.backward()
    assert out.item() == pytest.approx(2 * expected_loss, rel=1e-10)
    np.testing.assert_allclose(z.grad.numpy(), 2 * expected_grad, rtol=1e-9, atol=1e-12)


def _grid_pair(logits, true, **options):
    kernels.set_native_enabled(True)
    fast = apds.grid_search(logits, true, **options)
    kernels.set_native_enabled(False)
    try:
        slow = apds.grid_search(logits, true, **options)
    finally:
        kernels.set_native_enabled(True)
    return fast, slow


@needs_native
@pytest.mark.parametrize("pseudo_label", ["prediction", "sharpened"])
@pytest.mark.parametrize("strict", [False, True])
def test_grid_accumulation_equals_reference_in_float64(pseudo_label, strict, rng):
    size = dispatch.NATIVE_GRID_MIN_ROWS + 333
    true = np.clip(rng.normal(5.4, 1.1, size), 1, 10)
    logits = -((np.arange(1, 11) - (true + rng.normal(0, 0.7, size))[:, None]) ** 2) / rng.uniform(0.5, 3, (size, 1))
    options = dict(betas=(0.5, 1.0, 1.25, 2.0), thresholds=(0.3, 0.5, 0.7, 0.9), pseudo_label=pseudo_label, strict=strict)
    fast, slow = _grid_pair(logits, true, **options)
    for a, b in zip(fast.table, slow.table):
        assert a.num_selected == b.num_selected
        assert (a.mae is None and b.mae is None) or a.mae == pytest.approx(b.mae, rel=1e-9)
    assert (fast.beta, fast.threshold) == (slow.beta, slow.threshold)


@needs_native
def test_grid_accumulation_float32_and_torch(rng):
    torch = pytest.importorskip("torch")
    size = 5000
    logits = (rng.normal(size=(size, 10)) * 3).astype(np.float32)
    true = rng.uniform(1, 10, size).astype(np.float32)
    for pair in (_grid_pair(logits, true), _grid_pair(torch.from_numpy(logits), torch.from_numpy(true))):
        fast, slow = pair
        for a, b in zip(fast.table, slow.table):
            assert abs(a.num_selected - b.num_selected) <= 1  # a float32 probability on a threshold
            if a.num_selected > 100:
                assert a.mae == pytest.approx(b.mae, rel=2e-3)


def test_fallback_when_disabled_or_not_built(rng, monkeypatch):
    z, s = rng.normal(size=(16, 8)), rng.uniform(1, 10, 16)
    expected = ref.alignment_loss(z, s)
    monkeypatch.setattr(kernels, "_STATUS", kernels.KernelStatus(False, "the native extension was not built (test)"))
    assert not kernels.native_enabled()
    assert "not built" in str(kernels.native_available())
    assert flsa.alignment_loss(z, s) == pytest.approx(expected, rel=1e-10)
    logits = rng.normal(size=(3000, 10))
    assert apds.grid_search(logits, rng.uniform(1, 10, 3000), thresholds=(0.2, 0.3), min_selected=1).num_selected > 0


def test_environment_switch_forces_the_reference():
    code = (
        "import elta_core.kernels as k, numpy as np, elta_core.flsa as f\n"
        "assert not k.native_enabled()\n"
        "print(f.alignment_loss(np.eye(4), np.arange(4.0)))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "ELTA_NATIVE": "0"})


@needs_native
@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize("size,threads", [(300, 1), (1500, 1), (1500, 2)])  # 1500 rows: two threads' ranges
def test_the_native_gram_form_equals_the_backend_neutral_one(backend_name, size, threads, rng):
    """The Gram form on the CPU: the native passes (normalisation with the totals, then the
    walk in score order with the normalisation's backward) against the form in backend
    operations, float64, scores 1..10 in steps of 0.5 (ties across every range), a zero row
    and a row under the norm's floor, with and without the gradient, at torch's thread count."""
    z = rng.normal(size=(size, 24))
    z[3], z[5] = 0, z[5] * 1e-10
    s = np.round(rng.uniform(1, 10, size) * 2) / 2
    results = {}
    torch = pytest.importorskip("torch")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for native_on in (True, False):
            kernels.set_native_enabled(native_on)
            if backend_name == "numpy":
                results[native_on] = (float(flsa.alignment_loss(z, s, form="gram")), None)
            else:
                leaf = torch.tensor(z, requires_grad=True)
                loss = flsa.alignment_loss(leaf, torch.tensor(s), form="gram")
                loss.backward()
                results[native_on] = (loss.item(), leaf.grad.numpy())
    finally:
        kernels.set_native_enabled(True)
        torch.set_num_threads(threads_before)
    assert dispatch.select_impl("flsa", backend_name, z if backend_name == "numpy" else leaf, rows=size, width=24,
                                form="gram") == "native"
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-12)
    assert results[True][0] == pytest.approx(float(flsa.alignment_loss(z, s, form="direct")), rel=1e-10)
    if backend_name == "torch":
        np.testing.assert_allclose(results[True][1], results[False][1], rtol=1e-9, atol=1e-9)


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_native_gram_form_has_no_loss_without_a_score_range(dtype, rng):
    torch = pytest.importorskip("torch")
    leaf = torch.tensor(rng.normal(size=(600, 8)).astype(dtype), requires_grad=True)
    loss = flsa.alignment_loss(leaf, torch.full((600,), 3.0, dtype=leaf.dtype))
    loss.backward()
    assert loss.item() == 0 and not leaf.grad.any()


@pytest.mark.parametrize("rows", [1, 63, 64, 128, 129, 700])
def test_blocked_prefix_sums_equal_a_running_sum(rows, rng):
    from elta_core.backends import get_backend

    x = rng.normal(size=(rows, 5))
    np.testing.assert_allclose(flsa._prefix_sums(get_backend(x), x), np.cumsum(x, axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float32), ((1 << 20, 2), np.float32), ((1 << 19,), np.int64),
                                         ((7,), np.uint8)])
def test_the_native_buffers_are_plain_writable_arrays(shape, dtype, as_torch):
    """The native passes' buffers come from NumPy's allocator (huge pages from 4 MiB on):
    ordinary C-contiguous, writable arrays (tensors sharing their memory) of the shape and
    dtype."""
    if as_torch:
        pytest.importorskip("torch")
    buffer = native.numpy_allocated(shape, dtype, as_torch)
    array = buffer.numpy() if as_torch else buffer
    assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable
    array[...] = 3
    assert int(buffer.sum()) == 3 * int(np.prod(shape))


@needs_native
def test_the_native_gram_form_in_large_buffers_and_under_create_graph(rng):
    """B = 8192, D = 128 in float32: the (B, D) buffers cross 4 MiB (NumPy's huge pages);
    loss and gradient equal the reference at float32 tolerance. With
    ``create_graph`` the upstream gradient is part of a graph, and the scaling keeps it."""
    torch = pytest.importorskip("torch")
    z = torch.tensor(rng.normal(size=(8192, 128)), dtype=torch.float32)
    s = torch.tensor(rng.uniform(1, 10, 8192), dtype=torch.float32)
    results = []
    for native_on in (True, False):
        kernels.set_native_enabled(native_on)
        try:
            leaf = z.clone().requires_grad_()
            loss = flsa.alignment_loss(leaf, s)
            (grad,) = torch.autograd.grad(loss * 3, leaf)
            results.append((loss.item(), grad))
        finally:
            kernels.set_native_enabled(True)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-9)
    leaf = z[:300].clone().double().requires_grad_()
    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(native.flsa_loss(leaf, s[:300].double(), "gram") * weight, leaf, create_graph=True)
    grad.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad)
