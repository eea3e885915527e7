"""APDS as Triton kernels [Eqs. 7-9].

- ``_scores_kernel``: predicted scores ``s_hat_i`` (paper 3.4), one program per row
  block; the mean score ``s_bar`` is then a device-side reduction.
- ``_sharpen_kernel``: per row block, the softmax, ``s_hat``, the temperature of Eq. 8,
  the sharpened softmax, its row maximum and the threshold mask, in one pass.
- ``_grid_kernel``: per row block, for every beta of the grid, the sharpened maximum and
  the pseudo-label error, then the selected count and summed absolute error for every
  threshold at once. Partial sums per block are reduced afterwards (deterministic, no
  atomics), so a whole grid search is four launches and one copy to the host.

The rows are computed in float32 (float64 for float64 logits), as the reference; float
scalars (beta, the score scale, the threshold) are read from a tensor of that dtype, and
offsets into (N, C) arrays are int64.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from elta_core.kernels.triton_ops import compute_dtype, device_scalars


@triton.jit
def _softmax_and_score(logits_ptr, values_ptr, rows, row_ok, num_bins, compute: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < num_bins
    z = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * num_bins + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                other=0.0).to(compute)
    z = tl.where(col_ok[None, :], z, float("-inf"))
    shifted = z - tl.max(z, axis=1)[:, None]
    e = tl.exp(shifted)
    probs = e / tl.sum(e, axis=1)[:, None]
    values = tl.load(values_ptr + cols, mask=col_ok, other=0.0).to(compute)
    return shifted, probs, values, tl.sum(probs * values[None, :], axis=1)


@triton.jit
def _sharpened_exp(shifted, factor):
    """``exp(shifted * factor)`` per row; the row maximum (``shifted == 0``) stays 0 where
    ``factor`` overflows (0 * inf is NaN), so an overflowing temperature gives a one-hot row."""
    return tl.exp(tl.where(shifted == 0, 0.0, shifted * factor[:, None]))


@triton.jit
def _scores_kernel(logits_ptr, values_ptr, scores_ptr, size, num_bins, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < size
    compute = scores_ptr.dtype.element_ty
    _, _, _, scores = _softmax_and_score(logits_ptr, values_ptr, rows, row_ok, num_bins, compute, BLOCK_C)
    tl.store(scores_ptr + rows, scores, mask=row_ok)


@triton.jit
def _sharpen_kernel(logits_ptr, values_ptr, centre_ptr, scalars_ptr, sharpened_ptr, maximum_ptr, kept_ptr, size,
                    num_bins, STRICT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < size
    compute = sharpened_ptr.dtype.element_ty
    beta, score_scale, threshold = tl.load(scalars_ptr), tl.load(scalars_ptr + 1), tl.load(scalars_ptr + 2)
    shifted, _, _, scores = _softmax_and_score(logits_ptr, values_ptr, rows, row_ok, num_bins, compute, BLOCK_C)
    gap = tl.abs(scores - tl.load(centre_ptr)) / score_scale
    # z / tau_i = z * exp(beta * gap) [Eq. 8], on max-shifted logits as the reference
    e = _sharpened_exp(shifted, tl.exp(beta * gap))
    total = tl.sum(e, axis=1)
    maximum = 1.0 / total
    cols = tl.arange(0, BLOCK_C)
    tl.store(sharpened_ptr + rows.to(tl.int64)[:, None] * num_bins + cols[None, :], e / total[:, None],
             mask=row_ok[:, None] & (cols < num_bins)[None, :])
    tl.store(maximum_ptr + rows, maximum, mask=row_ok)
    kept = maximum > threshold if STRICT else maximum >= threshold
    tl.store(kept_ptr + rows, kept.to(tl.int8), mask=row_ok)


@triton.jit
def _grid_kernel(logits_ptr, values_ptr, true_ptr, centre_ptr, scale_ptr, betas_ptr, thresholds_ptr, counts_ptr,
                 sums_ptr, size, num_bins, num_betas, num_thresholds, STRICT: tl.constexpr,
                 SHARPENED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    block = tl.program_id(0)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < size
    compute = sums_ptr.dtype.element_ty
    shifted, _, values, scores = _softmax_and_score(logits_ptr, values_ptr, rows, row_ok, num_bins, compute, BLOCK_C)
    truth = tl.load(true_ptr + rows, mask=row_ok, other=0.0).to(compute)
    gap = tl.abs(scores - tl.load(centre_ptr)) / tl.load(scale_ptr)
    slots = tl.arange(0, BLOCK_T)
    slot_ok = slots < num_thresholds
    thresholds = tl.load(thresholds_ptr + slots, mask=slot_ok, other=2.0).to(compute)  # 2 is never reached
    out = block.to(tl.int64) * num_betas * num_thresholds  # this block's (betas, thresholds) table
    for b in range(0, num_betas):
        beta = tl.load(betas_ptr + b).to(compute)
        e = _sharpened_exp(shifted, tl.exp(beta * gap))
        total = tl.sum(e, axis=1)
        confidence = 1.0 / total
        if SHARPENED:
            error = tl.abs(tl.sum(e * values[None, :], axis=1) / total - truth)
        else:
            error = tl.abs(scores - truth)
        if STRICT:
            passing = confidence[:, None] > thresholds[None, :]
        else:
            passing = confidence[:, None] >= thresholds[None, :]
        passing = passing & row_ok[:, None]
        count = tl.sum(passing.to(compute), axis=0)
        error_sum = tl.sum(tl.where(passing, error[:, None], 0.0), axis=0)
        tl.store(counts_ptr + out + slots, count, mask=slot_ok)
        tl.store(sums_ptr + out + slots, error_sum, mask=slot_ok)
        out += num_thresholds


def _blocks(num_bins: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(num_bins)
    return max(1, min(128, 4096 // block_c)), block_c


def _centre(logits: torch.Tensor, values: torch.Tensor, mean_score: float | None, compute: torch.dtype) -> torch.Tensor:
    """``s_bar`` as a 1-element device tensor: the given value, or the mean predicted score."""
    if mean_score is not None:
        return device_scalars(logits, compute, mean_score)
    size, num_bins = logits.shape
    scores = torch.empty(size, device=logits.device, dtype=compute)
    block_n, block_c = _blocks(num_bins)
    _scores_kernel[(triton.cdiv(size, block_n),)](logits, values, scores, size, num_bins,
                                                   BLOCK_N=block_n, BLOCK_C=block_c)
    return scores.mean().reshape(1)


def _prepared(logits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    compute = compute_dtype(logits.dtype)
    return logits.detach().contiguous(), values.detach().to(device=logits.device, dtype=compute).contiguous(), compute


def sharpen_rows(logits: torch.Tensor, values: torch.Tensor, beta: float, mean_score: float | None,
                 score_scale: float, threshold: float = 1.0,
                 strict: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sharpened distributions (N, C), their row maxima (N,) and the mask ``max >= t``
    (``>`` when ``strict``), for validated (N >= 1, C) logits."""
    logits, values, compute = _prepared(logits, values)
    size, num_bins = logits.shape
    centre = _centre(logits, values, mean_score, compute)
    sharpened = torch.empty((size, num_bins), device=logits.device, dtype=compute)
    maximum = torch.empty(size, device=logits.device, dtype=compute)
    kept = torch.empty(size, device=logits.device, dtype=torch.int8)
    block_n, block_c = _blocks(num_bins)
    scalars = device_scalars(logits, compute, beta, score_scale, threshold)
    _sharpen_kernel[(triton.cdiv(size, block_n),)](
        logits, values, centre, scalars, sharpened, maximum, kept, size, num_bins,
        STRICT=bool(strict), BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return sharpened, maximum, kept.bool()


def grid_accumulate(logits: torch.Tensor, true_scores: torch.Tensor, values: torch.Tensor, betas: list[float],
                    thresholds: list[float], mean_score: float | None, score_scale: float, strict: bool,
                    pseudo_sharpened: bool) -> tuple[np.ndarray, np.ndarray]:
    """Selected counts and summed absolute errors, each (len(betas), len(thresholds)),
    as float64 NumPy arrays (the one copy to the host)."""
    logits, values, compute = _prepared(logits, values)
    size, num_bins = logits.shape
    device = logits.device
    centre = _centre(logits, values, mean_score, compute)
    block_n, block_c = _blocks(num_bins)
    blocks = triton.cdiv(size, block_n)
    counts = torch.empty((blocks, len(betas), len(thresholds)), device=device, dtype=compute)
    sums = torch.empty_like(counts)
    _grid_kernel[(blocks,)](
        logits, values, true_scores.detach().to(compute).contiguous(), centre,
        device_scalars(logits, compute, score_scale),
        torch.tensor(betas, dtype=compute).to(device), torch.tensor(thresholds, dtype=compute).to(device),
        counts, sums, size, num_bins, len(betas), len(thresholds),
        STRICT=bool(strict), SHARPENED=bool(pseudo_sharpened), BLOCK_N=block_n, BLOCK_C=block_c,
        BLOCK_T=triton.next_power_of_2(len(thresholds)),
    )
    totals = torch.stack([counts.double().sum(0), sums.double().sum(0)]).cpu().numpy()
    return totals[0], totals[1]
