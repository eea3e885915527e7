"""The native CPU kernels' wrappers, all of them: contiguity and dtypes for NumPy arrays,
and a torch autograd Function for torch CPU tensors. Callers validate inputs first (the
core's checks) and :mod:`elta_core.kernels.dispatch` decides when they run; nothing here
is reached with NaN, wrong shapes or bad parameters. Under ``torch.compile`` the dispatch
runs the reference instead, so no custom operator is registered.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from elta_core.kernels import native_module


def _float_array(x: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=dtype)


def _host(x: Any) -> np.ndarray:
    """A NumPy view of a CPU tensor or array."""
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def _threads(x: Any) -> int:
    """The native kernels' thread count: torch's for torch tensors (``torch.set_num_threads``
    holds for them too), OpenMP's own (0) for NumPy arrays."""
    return torch_module().get_num_threads() if hasattr(x, "detach") else 0


def flsa_loss_and_grad(features: Any, scores: Any, form: str = "direct",
                       with_grad: bool = True) -> tuple[float, Any]:
    """FLSA loss [Eqs. 5, 6] and its gradient w.r.t. the (B, D) features (None without
    ``with_grad``): float32 or float64 NumPy arrays, or torch CPU tensors (detached,
    C-contiguous, of one dtype). ``"direct"`` sums the B x B pairs in one pass (small
    batches); ``"gram"`` is the Gram form (docs/design.md), two native passes around its two
    matmuls, which run in the features' own library (its BLAS, its thread count)."""
    if form == "gram":
        return _gram_loss_and_grad(features, scores, with_grad)
    dtype = _kernel_dtype(features)
    z = _float_array(_host(features), dtype)
    grad = np.empty_like(z)
    loss = native_module().flsa_forward_backward(z, _float_array(_host(scores), dtype), grad)
    return loss, torch_module().from_numpy(grad) if hasattr(features, "detach") else grad


def _kernel_dtype(x: Any) -> type:
    """The kernels' float type for ``x``: float64 for float64, else float32."""
    return np.float64 if _host(x).dtype == np.float64 else np.float32


def _gram_loss_and_grad(z: Any, s: Any, with_grad: bool) -> tuple[float, Any]:
    size, width = z.shape
    as_torch = hasattr(z, "detach")
    dtype = _kernel_dtype(z)
    if not as_torch:
        z, s = _float_array(z, dtype), _float_array(s, dtype)

    def empty(shape, kind=dtype):
        return numpy_allocated(shape, kind, as_torch)

    zh, u, order, factor = empty((size, width)), empty(size), empty(size, np.int64), empty(size)
    floored, total, weighted_total = empty(size, np.uint8), empty(width), empty(width)
    kernels, threads = native_module(), _threads(z)
    has_range = kernels.flsa_gram_prepare(*map(_host, (z, s, zh, u, order, factor, floored, total, weighted_total)),
                                          threads)
    matmul = _exact_torch_matmul if as_torch else np.matmul
    gram = matmul(zh.T, zh)
    sum_c2 = float((gram * gram).sum())
    grad = None
    if with_grad:  # Zh G, then dL/dz written over it
        grad = empty((size, width))
        matmul(zh, gram, out=grad)
    target = _host(grad) if with_grad else np.empty((1, width), dtype=dtype)
    sum_cm, sum_m2 = kernels.flsa_gram_walk(*map(_host, (zh, order, u, total, weighted_total)), target,
                                            _host(factor), _host(floored), with_grad, threads)
    loss = (sum_c2 - 2 * sum_cm + sum_m2) / (size * size) if has_range else 0.0
    return loss, grad


def _exact_torch_matmul(a: Any, b: Any, out: Any = None) -> Any:
    """``torch.matmul`` in the operands' own precision: under autocast it would run in
    bfloat16, where the reference's matmuls never do."""
    torch = torch_module()
    with torch.autocast("cpu", enabled=False):
        return torch.matmul(a, b, out=out)


def numpy_allocated(shape: int | tuple[int, ...], dtype: Any, as_torch: bool) -> Any:
    """An uninitialised C-contiguous array from NumPy's allocator (a torch tensor sharing its
    memory where ``as_torch``). NumPy asks Linux for transparent huge pages for arrays of
    4 MiB or more, and torch's CPU allocator does not: the first touch of a fresh 64 MiB
    torch buffer page by page cost about 20 ms of the Gram form's 300 (docs/design.md)."""
    array = np.empty(shape, dtype=dtype)
    return torch_module().from_numpy(array) if as_torch else array


def torch_module():
    import torch

    return torch


def flsa_loss(features: Any, scores: Any, form: str = "direct") -> Any:
    """The FLSA loss [Eqs. 5, 6] of (B, D) features in ``form`` (``"direct"`` or
    ``"gram"``, as :func:`flsa_loss_and_grad`): a NumPy scalar for arrays, a differentiable
    0-d tensor for torch CPU tensors."""
    if hasattr(features, "detach"):
        return _native_flsa_function().apply(features, scores, form)
    loss, _ = flsa_loss_and_grad(features, scores, form, with_grad=form != "gram")
    return features.dtype.type(loss)


_FUNCTION = None


def _native_flsa_function():
    """The autograd Function over the kernels (torch imported on first use)."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class NativeFLSA(torch.autograd.Function):
            """The kernels return the gradient with the loss; the backward scales it (first order)."""

            @staticmethod
            def forward(ctx, features, scores, form):
                z = features.detach().contiguous()
                loss, grad = flsa_loss_and_grad(z, scores.detach().to(z.dtype).contiguous(), form,
                                                with_grad=ctx.needs_input_grad[0])
                ctx.save_for_backward(grad)
                return torch.tensor(loss, dtype=z.dtype)

            @staticmethod
            def backward(ctx, grad_loss):
                (grad,) = ctx.saved_tensors
                if grad_loss.requires_grad:  # a graph of the scaling itself (create_graph=True)
                    return grad_loss * grad, None, None
                return torch.mul(grad, grad_loss, out=numpy_allocated(grad.shape, grad.numpy().dtype, True)), None, None

        _FUNCTION = NativeFLSA
    return _FUNCTION


def grid_accumulate(logits: Any, true_scores: Any, bin_values: Any, betas: Sequence[float],
                    thresholds: Sequence[float], mean_score: float | None, score_scale: float, strict: bool,
                    pseudo_sharpened: bool) -> tuple[np.ndarray, np.ndarray]:
    """Selected counts and summed absolute errors, each (len(betas), len(thresholds)), for
    CPU arrays or tensors."""
    threads = _threads(logits)
    logits, true_scores, bin_values = _host(logits), _host(true_scores), _host(bin_values)
    dtype = _kernel_dtype(logits)
    counts = np.zeros((len(betas), len(thresholds)))
    sums = np.zeros((len(betas), len(thresholds)))
    native_module().grid_accumulate(
        _float_array(logits, dtype), _float_array(true_scores, np.float64), _float_array(bin_values, np.float64),
        _float_array(betas, np.float64), _float_array(thresholds, np.float64),
        np.nan if mean_score is None else float(mean_score), float(score_scale), bool(strict), bool(pseudo_sharpened),
        counts, sums, threads,
    )
    return counts, sums
