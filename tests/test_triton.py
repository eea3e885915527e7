"""Triton kernels against the float64 reference, under the interpreter on CPU
(``TRITON_INTERPRET=1`` is set by conftest before anything imports Triton), and the
dispatch rules. Tests that need a real GPU are skipped without one."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from elta_core import apds, flsa, kernels  # noqa: E402
from elta_core.kernels import dispatch  # noqa: E402
from elta_core.kernels.triton_ops import cpu_tensors_under_interpreter  # noqa: E402


def use_triton(backend_name: str, tensor) -> bool:
    rows = tensor.shape[0]
    return dispatch.select_impl("flsa", backend_name, tensor, rows=rows, width=tensor.shape[-1]) == "triton"

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs the kernels on CPU under TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Relative to the largest reference value. Half inputs run the cosine tiles on their own
# dtype's tensor cores (float32 accumulation), so Zh is rounded once more to 11 / 8 bits.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16]


@pytest.fixture(autouse=True)
def _kernels_on():
    kernels.set_triton_enabled(True)
    yield
    kernels.set_triton_enabled(True)


def _close(actual, expected, dtype, what):
    expected = np.asarray(expected, dtype=np.float64)
    bound = TOLERANCE[dtype] * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0, atol=bound, err_msg=what)


def _reference_loss_and_grad(z: torch.Tensor, scores: torch.Tensor, form: str = "auto"):
    """The reference in float64 on the values the kernel sees (rounded to its dtype)."""
    z64 = z.detach().double().clone().requires_grad_(True)
    with kernels_off():
        loss = flsa.alignment_loss(z64, scores.double(), form=form)
    loss.backward()
    return loss.item(), z64.grad.numpy()


class kernels_off:
    def __enter__(self):
        kernels.set_triton_enabled(False)

    def __exit__(self, *exc):
        kernels.set_triton_enabled(True)


def _kernel_loss_and_grad(z: torch.Tensor, scores: torch.Tensor, form: str = "auto"):
    leaf = z.detach().clone().requires_grad_(True)
    with cpu_tensors_under_interpreter():
        loss = flsa.alignment_loss(leaf, scores, form=form)
    loss.backward()
    return loss, leaf.grad


FLSA_SHAPES = [  # (B, D): direct for B <= D, Gram form for B > D
    (2, 3), (33, 70), (127, 130), (256, 300),
    (3, 2), (33, 7), (127, 48), (256, 20),
]


@needs_interpreter
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.bfloat16], ids=str)
@pytest.mark.parametrize("size,width", FLSA_SHAPES)
def test_flsa_kernels_match_reference(size, width, dtype):
    if dtype == torch.bfloat16 and size <= width:
        pytest.skip("the interpreter has no bf16 tl.dot (the direct form); covered on a GPU")
    generator = torch.Generator().manual_seed(size * 1000 + width)
    z = torch.randn(size, width, generator=generator).to(dtype)
    scores = torch.rand(size, generator=generator, dtype=torch.float64) * 9 + 1
    expected_loss, expected_grad = _reference_loss_and_grad(z, scores)
    loss, grad = _kernel_loss_and_grad(z, scores)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype and grad.shape == z.shape
    _close(loss.item(), expected_loss, dtype, "loss")
    # gradients are O(1 / B^2): compare relative to their own scale
    scale = np.abs(expected_grad).max()
    _close(grad.double().numpy() / scale, expected_grad / scale, dtype, "gradient")


@needs_interpreter
@pytest.mark.parametrize("form", ["direct", "gram"])
def test_flsa_both_forms_on_one_shape(form):
    """An explicit ``form`` picks the kernel form too; both equal the reference."""
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(40, 24, generator=generator)
    scores = torch.randint(1, 11, (40,), generator=generator).double()  # ties in the score order
    expected_loss, expected_grad = _reference_loss_and_grad(z, scores, form)
    loss, grad = _kernel_loss_and_grad(z, scores, form)
    _close(loss.item(), expected_loss, torch.float32, "loss")
    _close(grad.numpy() / np.abs(expected_grad).max(), expected_grad / np.abs(expected_grad).max(), torch.float32,
           "gradient")


@needs_interpreter
@pytest.mark.parametrize("form", ["direct", "gram"])
def test_flsa_gradcheck_float64(form):
    from elta_core.kernels.triton_ops.flsa import flsa_loss

    generator = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    scores = torch.rand(6, dtype=torch.float64, generator=generator) * 9 + 1
    assert torch.autograd.gradcheck(lambda x: flsa_loss(x, scores, form), (z,), eps=1e-6, atol=1e-8)


@needs_interpreter
@pytest.mark.parametrize(
    "case", ["one sample", "equal scores", "zero vector", "all zero", "distributions"],
)
def test_flsa_degenerate_batches_equal_reference(case):
    generator = torch.Generator().manual_seed(11)
    z = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    scores = torch.rand(6, generator=generator, dtype=torch.float64) * 9 + 1
    if case == "one sample":
        z, scores = z[:1], scores[:1]
    elif case == "equal scores":
        scores = torch.full((6,), 5.0, dtype=torch.float64)
    elif case == "zero vector":
        z[2] = 0
    elif case == "all zero":
        z.zero_()
    else:
        scores = torch.softmax(torch.randn(6, 10, generator=generator, dtype=torch.float64), dim=1)
    expected_loss, expected_grad = _reference_loss_and_grad(z, scores)
    loss, grad = _kernel_loss_and_grad(z, scores)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    np.testing.assert_allclose(grad.numpy(), expected_grad, atol=1e-12)
    assert np.isfinite(grad.numpy()).all()


@needs_interpreter
def test_flsa_without_gradient_skips_it():
    from elta_core.kernels.triton_ops.flsa import loss_and_grad

    z = torch.randn(20, 30)
    scores = torch.rand(20) * 9 + 1
    loss, grad = loss_and_grad(z, scores, "direct", with_grad=False)
    assert grad is None
    with kernels_off():
        assert loss.item() == pytest.approx(flsa.alignment_loss(z, scores).item(), rel=1e-5)


APDS_SHAPES = [(1, 10), (2, 9), (33, 10), (127, 9), (256, 10)]


def _logits(size, bins, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed + size * 31 + bins)
    return (torch.randn(size, bins, generator=generator) * 2).to(dtype)


@needs_interpreter
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.bfloat16], ids=str)
@pytest.mark.parametrize("size,bins", APDS_SHAPES)
def test_sharpen_and_select_kernels_match_reference(size, bins, dtype):
    logits = _logits(size, bins, dtype)
    reference_logits = logits.double()
    expected = apds.sharpen(reference_logits, 1.2)
    with cpu_tensors_under_interpreter():
        sharpened = apds.sharpen(logits, 1.2)
        kept = apds.select(logits, 1.2, 0.5, pseudo_label="sharpened")
        kept_prediction = apds.select(logits, 1.1, 0.5, mean_score=5.5, strict=True)
    assert sharpened.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close(sharpened.numpy(), expected.numpy(), torch.float64 if dtype == torch.float64 else torch.float32, "sharpened")
    np.testing.assert_allclose(sharpened.double().sum(1).numpy(), 1.0, atol=1e-5)

    maximum = expected.max(dim=1).values.numpy()
    reference = apds.select(reference_logits, 1.2, 0.5, pseudo_label="sharpened")
    near = np.abs(maximum - 0.5) < 1e-5  # a row on the threshold may go either way in float32
    assert set(kept.indices.tolist()) ^ set(reference.indices.tolist()) <= set(np.flatnonzero(near).tolist())
    common = sorted(set(kept.indices.tolist()) & set(reference.indices.tolist()))
    rows = {int(i): k for k, i in enumerate(kept.indices.tolist())}
    reference_rows = {int(i): k for k, i in enumerate(reference.indices.tolist())}
    for i in common:
        np.testing.assert_allclose(kept.labels[rows[i]].double().numpy(),
                                   reference.labels[reference_rows[i]].numpy(), atol=1e-5)

    reference_prediction = apds.select(reference_logits, 1.1, 0.5, mean_score=5.5, strict=True)
    assert kept_prediction.indices.dtype == torch.int64
    if dtype == torch.float64:
        assert torch.equal(kept_prediction.indices, reference_prediction.indices)
        _close(kept_prediction.labels.numpy(), reference_prediction.labels.numpy(), dtype, "labels")


@needs_interpreter
@pytest.mark.parametrize("pseudo_label", ["prediction", "sharpened"])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + [torch.bfloat16], ids=str)
def test_grid_kernel_matches_reference(dtype, strict, pseudo_label):
    logits = _logits(300, 10, dtype, seed=5)
    generator = torch.Generator().manual_seed(2)
    labels = torch.rand(300, generator=generator, dtype=torch.float64) * 9 + 1
    options = dict(betas=[0.5, 1.0, 1.25, 2.0], thresholds=[0.2, 0.3, 0.35, 0.5, 0.7], min_selected=1,
                   strict=strict, pseudo_label=pseudo_label)
    with kernels_off():
        expected = apds.grid_search(logits.double(), labels, **options)
    with cpu_tensors_under_interpreter():
        result = apds.grid_search(logits, labels, **options)
    exact = dtype == torch.float64
    for cell, reference in zip(result.table, expected.table):
        assert (cell.beta, cell.threshold) == (reference.beta, reference.threshold)
        assert abs(cell.num_selected - reference.num_selected) <= (0 if exact else 1)
        if cell.num_selected == reference.num_selected and cell.mae is not None:
            assert cell.mae == pytest.approx(reference.mae, rel=1e-12 if exact else 1e-4)
    if exact:
        assert (result.beta, result.threshold, result.num_selected) == (
            expected.beta, expected.threshold, expected.num_selected)


@needs_interpreter
def test_grid_kernel_on_distribution_labels_and_score_scale():
    logits = _logits(64, 9, torch.float64, seed=8)
    labels = torch.softmax(torch.randn(64, 9, dtype=torch.float64), dim=1)
    values = torch.linspace(1, 5, 9, dtype=torch.float64)
    options = dict(bin_values=values, score_scale=0.5, thresholds=[0.3, 0.5], min_selected=1)
    with kernels_off():
        expected = apds.grid_search(logits, labels, **options)
    with cpu_tensors_under_interpreter():
        result = apds.grid_search(logits, labels, **options)
    for cell, reference in zip(result.table, expected.table):
        assert cell.num_selected == reference.num_selected
        assert cell.mae == pytest.approx(reference.mae, rel=1e-12)
    assert (result.beta, result.threshold) == (expected.beta, expected.threshold)


# -- dispatch -------------------------------------------------------------------------

def test_cpu_tensors_never_dispatch_by_default():
    z = torch.randn(4, 3)
    assert not use_triton("torch", z)
    assert not use_triton("numpy", np.zeros((4, 3)))


@needs_interpreter
def test_dispatch_goes_to_kernels_and_switch_forces_reference(monkeypatch):
    from elta_core.kernels.triton_ops import apds as apds_kernels
    from elta_core.kernels.triton_ops import flsa as flsa_kernels

    calls = []
    for module, name in [(flsa_kernels, "flsa_loss"), (apds_kernels, "sharpen_rows"),
                         (apds_kernels, "grid_accumulate")]:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    z, scores = torch.randn(8, 5), torch.rand(8) * 9 + 1
    logits = torch.randn(8, 10)
    with cpu_tensors_under_interpreter():
        assert use_triton("torch", z)
        flsa.alignment_loss(z, scores)
        apds.sharpen(logits, 1.0)
        apds.select(logits, 1.0, 0.2)
        apds.grid_search(logits, scores, thresholds=[0.2], min_selected=1)
        assert calls == ["flsa_loss", "sharpen_rows", "sharpen_rows", "grid_accumulate"]
        calls.clear()
        kernels.set_triton_enabled(False)
        assert not use_triton("torch", z)
        flsa.alignment_loss(z, scores)
        apds.sharpen(logits, 1.0)
        apds.grid_search(logits, scores, thresholds=[0.2], min_selected=1)
        assert calls == []
    assert kernels.triton_available()
    assert "Triton" in str(kernels.triton_available().reason)


@needs_interpreter
def test_dispatch_runs_checks_before_launch():
    with cpu_tensors_under_interpreter():
        bad = torch.randn(5, 4)
        bad[1, 2] = float("nan")
        with pytest.raises(ValueError, match="features"):
            flsa.alignment_loss(bad, torch.rand(5))
        with pytest.raises(ValueError, match="scores: expected 5 rows"):
            flsa.alignment_loss(torch.randn(5, 4), torch.rand(4))
        with pytest.raises(ValueError, match="beta"):
            apds.sharpen(torch.randn(5, 10), -1.0)
        with pytest.raises(ValueError, match="logits"):
            apds.select(torch.randn(5, 1), 1.0, 0.5)
        with pytest.raises(ValueError, match="mean_score"):
            apds.sharpen(torch.randn(5, 10), 1.0, mean_score=float("inf"))
        with pytest.raises(ValueError, match="min_selected"):
            apds.grid_search(torch.randn(5, 10), torch.rand(5) * 9 + 1, thresholds=[0.99], min_selected=5)


@needs_interpreter
def test_torch_compile_takes_the_reference():
    calls = []

    def loss(z, s):
        calls.append(use_triton("torch", z))
        return flsa.alignment_loss(z, s, validate=False)

    with cpu_tensors_under_interpreter():
        compiled = torch.compile(loss, backend="aot_eager", fullgraph=False)
        compiled(torch.randn(6, 4), torch.rand(6))
    assert calls and not any(calls)


@needs_interpreter
@pytest.mark.parametrize("operation", ["flsa", "apds_rows", "apds_grid"])
def test_a_failing_kernel_falls_back_to_the_reference_with_one_warning(monkeypatch, operation):
    """A compile or launch failure on a real GPU must not stop training: forced here."""
    from elta_core.kernels.triton_ops import apds as apds_kernels
    from elta_core.kernels.triton_ops import flsa as flsa_kernels

    def broken(*args, **kwargs):
        raise RuntimeError("PTX JIT compilation failed (forced)")

    target = {"flsa": (flsa_kernels, "flsa_loss"), "apds_rows": (apds_kernels, "sharpen_rows"),
              "apds_grid": (apds_kernels, "grid_accumulate")}[operation]
    monkeypatch.setattr(*target, broken)
    dispatch.reset_broken_kernels()
    z, scores, logits = torch.randn(8, 5, dtype=torch.float64), torch.rand(8, dtype=torch.float64) * 9 + 1, \
        torch.randn(8, 10, dtype=torch.float64)
    run = {"flsa": lambda: flsa.alignment_loss(z, scores), "apds_rows": lambda: apds.sharpen(logits, 1.0),
           "apds_grid": lambda: apds.grid_search(logits, scores, thresholds=[0.2], min_selected=1).table}[operation]
    with kernels_off():
        expected = run()
    try:
        with cpu_tensors_under_interpreter():
            with pytest.warns(RuntimeWarning, match=f"the triton kernel for {operation} failed.*PTX JIT"):
                first = run()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("error")  # one warning only: the kernel is not retried
                second = run()
        assert dispatch.broken_kernels() == {(operation, "triton"): "RuntimeError: PTX JIT compilation failed (forced)"}
    finally:
        dispatch.reset_broken_kernels()
    for result in (first, second):
        if operation == "apds_grid":
            assert result == expected
        else:
            torch.testing.assert_close(result, expected)


def test_triton_default_switch_makes_the_reference_the_default(monkeypatch):
    cuda_like = type("FakeCuda", (), {"device": torch.device("cuda"), "shape": (8, 5)})()
    monkeypatch.setattr(dispatch, "TRITON_BY_DEFAULT", False)
    assert dispatch.select_impl("flsa", "torch", cuda_like, rows=8, width=5) == "reference"


def test_interpreter_switch_needs_the_environment(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        with cpu_tensors_under_interpreter():
            pass


# -- real GPU (skipped here) -------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size,width", [(48, 768), (1024, 768), (4096, 1024)])
def test_flsa_on_cuda_matches_reference(size, width, dtype):
    generator = torch.Generator().manual_seed(size)
    z = torch.randn(size, width, generator=generator).to(dtype)
    scores = torch.rand(size, generator=generator, dtype=torch.float64) * 9 + 1
    expected_loss, expected_grad = _reference_loss_and_grad(z, scores)
    leaf = z.cuda().requires_grad_(True)
    loss = flsa.alignment_loss(leaf, scores.cuda())
    loss.backward()
    _close(loss.item(), expected_loss, dtype, "loss")
    scale = np.abs(expected_grad).max()
    _close(leaf.grad.double().cpu().numpy() / scale, expected_grad / scale, dtype, "gradient")


@needs_cuda
def test_grid_search_on_cuda_matches_reference():
    logits = _logits(20_000, 10, torch.float32, seed=1)
    labels = torch.rand(20_000, dtype=torch.float64) * 9 + 1
    expected = apds.grid_search(logits, labels, thresholds=[0.3, 0.5], min_selected=1)
    result = apds.grid_search(logits.cuda(), labels.cuda(), thresholds=[0.3, 0.5], min_selected=1)
    for cell, reference in zip(result.table, expected.table):
        assert abs(cell.num_selected - reference.num_selected) <= 1


@needs_interpreter
def test_gpu_benchmark_script_smoke(tmp_path):
    """benchmarks/gpu_kernels.py stays runnable: its --smoke mode on the CPU interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.md"
    completed = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_kernels.py"), "--smoke", "--out", str(out)],
                               capture_output=True, text=True, timeout=300, cwd=root)
    assert completed.returncode == 0, completed.stderr[-3000:]
    text = out.read_text()
    assert "| 40 | elta_core Triton |" in text and "| elta_core Triton |" in text.split("grid search")[1]
    assert "NO" not in text


@needs_interpreter
def test_torch_adapter_step_uses_the_kernel(monkeypatch):
    """ELTAWrapper's FLSA term goes through the kernel for tensors that dispatch, and the
    parameter gradients equal those of the reference."""
    from torch import nn

    from elta_core.adapters.torch import ELTAWrapper
    from elta_core.kernels.triton_ops import flsa as flsa_kernels

    calls = []
    original = flsa_kernels.flsa_loss
    monkeypatch.setattr(flsa_kernels, "flsa_loss", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 10))
    x = torch.randn(12, 6)
    y = torch.softmax(torch.randn(12, 10), dim=1)
    gradients = []
    for dispatch in (False, True):
        model.zero_grad()
        wrapper = ELTAWrapper(model, "2", num_pairs=3, seed=4)
        if dispatch:
            with cpu_tensors_under_interpreter():
                wrapper(x, y).loss.backward()
        else:
            with kernels_off():
                wrapper(x, y).loss.backward()
        gradients.append([p.grad.clone() for p in model.parameters()])
    assert calls
    for reference_grad, kernel_grad in zip(*gradients):
        torch.testing.assert_close(kernel_grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_the_kernels_label_side_equals_the_cores_definitions():
    from elta_core.backends import get_backend
    from elta_core.kernels.triton_ops import flsa as flsa_kernels

    torch_backend = get_backend(torch.zeros(0))
    for scores in (torch.rand(17, dtype=torch.float64) * 9 + 1, torch.tensor([3.0, 3.0, 7.0, 3.0], dtype=torch.float64),
                   torch.full((5,), 4.0, dtype=torch.float64)):
        u, has_range = flsa_kernels.unit_scores(scores)
        expected_u, expected_range = flsa.unit_scores(torch_backend, scores)
        torch.testing.assert_close(u, expected_u)
        assert bool(has_range) == bool(expected_range)
        torch.testing.assert_close(flsa_kernels.label_similarity_squared_sum(u),
                                   flsa.sum_similarity_squared(torch_backend, u))
    assert flsa_kernels.NORM_FLOOR == flsa.NORM_FLOOR


@needs_interpreter
def test_gram_scan_over_many_row_blocks_with_ties_across_them():
    """The blocked scan: 200 rows are four row blocks of the prefix sums, and scores 1..5
    tie across the blocks' edges."""
    from elta_core.kernels.triton_ops.flsa import GRAM_BLOCK_ROWS

    generator = torch.Generator().manual_seed(5)
    z = torch.randn(200, 10, generator=generator)
    scores = torch.randint(1, 6, (200,), generator=generator).double()
    assert 200 > 3 * GRAM_BLOCK_ROWS
    expected_loss, expected_grad = _reference_loss_and_grad(z, scores, "gram")
    loss, grad = _kernel_loss_and_grad(z, scores, "gram")
    _close(loss.item(), expected_loss, torch.float32, "loss")
    scale = np.abs(expected_grad).max()
    _close(grad.numpy() / scale, expected_grad / scale, torch.float32, "gradient")


def test_float32_tiles_follow_torchs_matmul_precision():
    from elta_core.kernels.triton_ops.flsa import dot_precision

    before = torch.get_float32_matmul_precision()
    try:
        for setting, expected in (("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")):
            torch.set_float32_matmul_precision(setting)
            assert dot_precision(torch.float32) == expected
            assert dot_precision(torch.float64) == dot_precision(torch.bfloat16) == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_features_reach_the_kernel_as_they_are(monkeypatch, dtype):
    """The core upcasts half features for the reference, not for the Triton kernel (its
    tiles run on the tensor cores); the gradient comes back in the features' dtype."""
    from elta_core.kernels.triton_ops import flsa as flsa_kernels

    seen = []
    original = flsa_kernels.loss_and_grad
    monkeypatch.setattr(flsa_kernels, "loss_and_grad",
                        lambda features, *args, **kwargs: seen.append(features.dtype) or original(features, *args,
                                                                                                   **kwargs))
    z = torch.randn(40, 12).to(dtype)  # B > D: the Gram form (no half tl.dot needed by the interpreter)
    loss, grad = _kernel_loss_and_grad(z, torch.rand(40) * 9 + 1)
    assert seen == [dtype] and loss.dtype == torch.float32 and grad.dtype == dtype


@needs_interpreter
@pytest.mark.parametrize("size,width", [(24, 40), (40, 12)])
def test_flsa_kernel_on_float32_features_of_norm_1e20(size, width):
    """The row norms are summed relative to each row's largest entry: plain float32 squares
    of a norm-1e20 row overflow, and every row would count as zero."""
    generator = torch.Generator().manual_seed(size)
    z = torch.randn(size, width, generator=generator)
    scores = torch.rand(size, generator=generator, dtype=torch.float64) * 9 + 1
    expected_loss, _ = _reference_loss_and_grad(z, scores)
    loss, grad = _kernel_loss_and_grad(z * 1e20, scores)
    _close(loss.item(), expected_loss, torch.float32, "loss")
    assert torch.isfinite(grad).all()
