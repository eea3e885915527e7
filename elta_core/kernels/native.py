"""Python side of the native CPU kernels: contiguity and dtypes. Callers validate inputs
first (the core's checks) and :mod:`elta_core.kernels.dispatch` decides when they run;
nothing here is reached with NaN, wrong shapes or bad parameters.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from elta_core.kernels import native_module


def _float_array(x: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=dtype)


def flsa_loss_and_grad(features: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """FLSA loss and its gradient w.r.t. the (B, D) features, float32 or float64."""
    dtype = np.float64 if features.dtype == np.float64 else np.float32
    z = _float_array(features, dtype)
    grad = np.empty_like(z)
    loss = native_module().flsa_forward_backward(z, _float_array(scores, dtype), grad)
    return loss, grad


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
