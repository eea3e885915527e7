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


def flsa_loss_and_grad(features: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """FLSA loss and its gradient w.r.t. the (B, D) features, float32 or float64."""
    dtype = np.float64 if features.dtype == np.float64 else np.float32
    z = _float_array(features, dtype)
    grad = np.empty_like(z)
    loss = native_module().flsa_forward_backward(z, _float_array(scores, dtype), grad)
    return loss, grad


def flsa_loss(features: Any, scores: Any, form: str = "direct") -> Any:
    """The FLSA loss [Eqs. 5, 6] of (B, D) features: a NumPy scalar for arrays, a
    differentiable 0-d tensor for torch CPU tensors. The kernel sums the B x B pairs in
    one pass, which is exact for every ``form``."""
    if hasattr(features, "detach"):
        return _native_flsa_function().apply(features, scores)
    loss, _ = flsa_loss_and_grad(features, scores)
    return features.dtype.type(loss)


_FUNCTION = None


def _native_flsa_function():
    """The autograd Function over the kernel (torch imported on first use)."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class NativeFLSA(torch.autograd.Function):
            """The kernel returns the gradient with the loss; the backward scales it (first order)."""

            @staticmethod
            def forward(ctx, features, scores):
                z = features.detach().contiguous()
                grad = torch.empty_like(z)
                loss = native_module().flsa_forward_backward(z, scores.detach().to(z.dtype).contiguous(), grad)
                ctx.save_for_backward(grad)
                return torch.tensor(loss, dtype=z.dtype)

            @staticmethod
            def backward(ctx, grad_loss):
                (grad,) = ctx.saved_tensors
                return grad_loss * grad, None

        _FUNCTION = NativeFLSA
    return _FUNCTION


def gram_walk(zh: Any, order: Any, u_sorted: Any, total: Any, weighted_total: Any, grad: Any | None) -> float:
    """The Gram form's walk over the rows in score order: ``sum_k zh_k . (M Zh)_k``, and,
    where ``grad`` (B, D) holds ``Zh G``, ``4 (Zh G - M Zh)`` written over it in place. CPU
    arrays or tensors of one float dtype; ``order`` int64."""
    zh = _host(zh)
    dtype = np.float64 if zh.dtype == np.float64 else np.float32
    target = _host(grad) if grad is not None else np.empty((1, zh.shape[1]), dtype=dtype)
    if target.dtype != dtype or not target.flags.c_contiguous:
        raise ValueError("grad: expected a C-contiguous buffer of the features' dtype")  # written in place
    return native_module().flsa_gram_walk(
        _float_array(zh, dtype), _float_array(_host(order), np.int64), _float_array(_host(u_sorted), dtype),
        _float_array(_host(total).reshape(-1), dtype), _float_array(_host(weighted_total).reshape(-1), dtype), target,
        grad is not None)


def grid_accumulate(logits: Any, true_scores: Any, bin_values: Any, betas: Sequence[float],
                    thresholds: Sequence[float], mean_score: float | None, score_scale: float, strict: bool,
                    pseudo_sharpened: bool) -> tuple[np.ndarray, np.ndarray]:
    """Selected counts and summed absolute errors, each (len(betas), len(thresholds)), for
    CPU arrays or tensors."""
    logits, true_scores, bin_values = _host(logits), _host(true_scores), _host(bin_values)
    dtype = np.float64 if logits.dtype == np.float64 else np.float32
    counts = np.zeros((len(betas), len(thresholds)))
    sums = np.zeros((len(betas), len(thresholds)))
    native_module().grid_accumulate(
        _float_array(logits, dtype), _float_array(true_scores, np.float64), _float_array(bin_values, np.float64),
        _float_array(betas, np.float64), _float_array(thresholds, np.float64),
        np.nan if mean_score is None else float(mean_score), float(score_scale), bool(strict), bool(pseudo_sharpened),
        counts, sums,
    )
    return counts, sums
