"""Python side of the native CPU kernels: contiguity, dtypes, the torch custom operator
and the dispatch rules. Callers validate inputs first (the core's checks); nothing here
is reached with NaN, wrong shapes or bad parameters.

Dispatch: a kernel is used only for the shapes where ``benchmarks/bench_native.py``
measured it faster than the best of torch eager and NumPy (see ``benchmarks/README.md``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from elta_core.kernels import native_enabled, native_module

# Measured on 2 cores (benchmarks/README.md). FLSA: the single-pass kernel is >= 2x faster
# than the best of NumPy and torch eager only while its O(B^2 D) pair loop is tiny (B=16,
# D=256: 2.8x against NumPy; through the torch op, 3.0x against torch eager); past that,
# BLAS wins. Used for NumPy and torch CPU inputs within that work.
FLSA_MAX_PAIR_WORK = 131_072  # B * B * D
# The grid accumulation wins from small pools on; below this the Python overhead is nil anyway.
GRID_MIN_ROWS = 2048


def use_native_flsa(backend_name: str, features: Any, size: int, width: int) -> bool:
    if not native_enabled() or size * size * width > FLSA_MAX_PAIR_WORK:
        return False
    return backend_name == "numpy" or (backend_name == "torch" and features.device.type == "cpu")


def use_native_grid(backend_name: str, logits: Any, rows: int) -> bool:
    if not native_enabled() or rows < GRID_MIN_ROWS:
        return False
    return backend_name == "numpy" or (backend_name == "torch" and logits.device.type == "cpu")


def _float_array(x: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=dtype)


def flsa_loss_and_grad(features: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """FLSA loss and its gradient w.r.t. the (B, D) features, float32 or float64."""
    dtype = np.float64 if features.dtype == np.float64 else np.float32
    z = _float_array(features, dtype)
    grad = np.empty_like(z)
    loss = native_module().flsa_forward_backward(z, _float_array(scores, dtype), grad)
    return loss, grad


def sharpen(logits: np.ndarray, beta: float, bin_values: np.ndarray, mean_score: float | None,
            score_scale: float, threshold: float = 1.0, strict: bool = False):
    """The APDS row operation: (sharpened (N, C), max (N,), kept (N,), s_bar)."""
    dtype = np.float64 if logits.dtype == np.float64 else np.float32
    z = _float_array(logits, dtype)
    sharpened = np.empty_like(z)
    maximum = np.empty(len(z), dtype=dtype)
    kept = np.empty(len(z), dtype=bool)
    centre = native_module().apds_rows(
        z, _float_array(bin_values, np.float64), float(beta), np.nan if mean_score is None else float(mean_score),
        float(score_scale), float(threshold), bool(strict), sharpened, maximum, kept,
    )
    return sharpened, maximum, kept, centre


def grid_accumulate(logits: np.ndarray, true_scores: np.ndarray, bin_values: np.ndarray, betas: Sequence[float],
                    thresholds: Sequence[float], mean_score: float | None, score_scale: float, strict: bool,
                    pseudo_sharpened: bool) -> tuple[np.ndarray, np.ndarray]:
    """Selected counts and summed absolute errors, each (len(betas), len(thresholds))."""
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


def torch_flsa_loss(features, scores):
    """FLSA loss of torch CPU tensors through the ``elta::flsa_forward`` custom operator."""
    from elta_core.kernels.torch_ops import flsa_loss

    return flsa_loss(features, scores)
