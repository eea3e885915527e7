"""FLSA loss and gradient [Eqs. 5, 6] as Triton kernels, with a
``torch.autograd.Function`` on top (the Liger-Kernel layout).

Pipeline (every step stays on the device, no host synchronisation):

1. ``_normalize_kernel``: row norms (floored, as the reference) and ``Zh`` in the
   compute dtype (float32, float64 for float64 inputs).
2. Unit scores ``u = (s - min s) / R`` from a device-side ``aminmax``.
3. The sum ``sum_ij (C_ij - M_ij)^2`` and its gradient w.r.t. ``Zh``:

   - B <= D, ``_direct_kernel``: one program per (row block, column split). It forms a
     cosine tile, the label tile from the scores, the squared error and ``gap @ Zh_j``
     in one pass over the column blocks; no B x B matrix is stored. Column splits give
     deterministic partial gradients that are summed afterwards (no atomics).
   - B > D, the Gram form (docs/design.md): ``Zh^T Zh`` and ``Zh G`` are matmuls, and the
     prefix sums ``P0, P1`` over the rows in score order are a blocked scan, so that the
     programs grow with B: ``_block_sums_kernel`` sums every (row block, feature block)
     tile at once, ``torch.cumsum`` scans the block sums, and ``_prefix_kernel`` finishes
     every tile's prefix sums from its block's carry, producing ``(M Zh)_k``, its share of
     ``sum C*M`` and the gradient ``Zh G - M Zh`` in place.

4. ``_normalize_backward_kernel``: the chain rule through the normalisation, scaled by
   ``1 / B^2`` (0 when all scores are equal), written in the input dtype.

float16 and bfloat16 inputs are computed in float32 (the cosine tiles use the input
dtype's tensor cores with float32 accumulation); float32 tiles follow
``torch.get_float32_matmul_precision()`` (TF32 unless "highest"). Every offset into a
(B, D) array is computed in int64, and float scalars are read from 1-element tensors of
the compute dtype (a Python float argument would reach a float64 kernel as float32). The label side (unit scores, the sum
of ``M_ij^2``) is a few torch ops here, tested against the core's definitions, so that
this module imports nothing from the core.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from elta_core.kernels.triton_ops import compute_dtype, device_scalars

NORM_FLOOR = 1e-8  # elta_core.flsa.NORM_FLOOR: a kernel module imports nothing of the core (tested equal)

_DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _row_tile(rows, row_ok, start, width, BLOCK_D: tl.constexpr):
    """Offsets and mask of the (rows, start:start+BLOCK_D) tile of a row-major (B, D) array."""
    cols = start + tl.arange(0, BLOCK_D)
    # int64: rows * width passes 2**31 for large B x D (docs/design.md, "Kernels on a GPU")
    return rows.to(tl.int64)[:, None] * width + cols[None, :], row_ok[:, None] & (cols < width)[None, :]


@triton.jit
def _normalize_kernel(z_ptr, zh_ptr, row_norm_ptr, norm_ptr, floor_ptr, rows_total, width,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    compute = zh_ptr.dtype.element_ty
    # The squares are summed relative to the row's largest entry so far, rescaled when it
    # grows (one pass): a float32 row of norm 1e20 would overflow its plain squares.
    largest = tl.zeros([BLOCK_R], dtype=compute)
    total = tl.zeros([BLOCK_R], dtype=compute)
    for start in range(0, width, BLOCK_D):
        offsets, mask = _row_tile(rows, row_ok, start, width, BLOCK_D)
        x = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(compute)
        grown = tl.maximum(largest, tl.max(tl.abs(x), axis=1))
        safe = tl.where(grown > 0, grown, 1.0)
        ratio = largest / safe
        scaled = x / safe[:, None]
        total = total * ratio * ratio + tl.sum(scaled * scaled, axis=1)
        largest = grown
    row_norm = tl.sqrt(total) * largest
    norm = tl.maximum(row_norm, tl.load(floor_ptr))
    tl.store(row_norm_ptr + rows, row_norm, mask=row_ok)
    tl.store(norm_ptr + rows, norm, mask=row_ok)
    for start in range(0, width, BLOCK_D):  # second pass: the norm needs the whole row
        offsets, mask = _row_tile(rows, row_ok, start, width, BLOCK_D)
        x = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(compute)
        tl.store(zh_ptr + offsets, x / norm[:, None], mask=mask)


@triton.jit
def _direct_kernel(zh_ptr, u_ptr, grad_ptr, partial_ptr, size, width, blocks_per_split,
                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_OUT: tl.constexpr, WITH_GRAD: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Program (i, split): rows block i against column blocks of its split."""
    block_i = tl.program_id(0)
    split = tl.program_id(1)
    rows = block_i * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < size
    row_offsets = rows.to(tl.int64)[:, None] * width  # int64: past 2**31 for large B x D
    compute = zh_ptr.dtype.element_ty
    u_rows = tl.load(u_ptr + rows, mask=row_ok, other=0.0)
    squares = tl.zeros([BLOCK_I, BLOCK_J], dtype=compute)
    first = split.to(tl.int64) * blocks_per_split
    for block_j in range(first, first + blocks_per_split):
        cols = block_j * BLOCK_J + tl.arange(0, BLOCK_J)
        col_ok = cols < size
        col_offsets = cols.to(tl.int64) * width
        cosine = tl.zeros([BLOCK_I, BLOCK_J], dtype=compute)
        for start in range(0, width, BLOCK_K):
            ks = start + tl.arange(0, BLOCK_K)
            k_ok = ks < width
            a = tl.load(zh_ptr + row_offsets + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(zh_ptr + col_offsets[None, :] + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            cosine += tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION, out_dtype=compute)
        u_cols = tl.load(u_ptr + cols, mask=col_ok, other=0.0)
        gap = cosine - (1.0 - tl.abs(u_rows[:, None] - u_cols[None, :]))
        gap = tl.where(row_ok[:, None] & col_ok[None, :], gap, 0.0)
        squares += gap * gap
        if WITH_GRAD:
            # gradient rows of this split: out[split, i, :] += gap @ Zh[cols, :]
            out_base = grad_ptr + split.to(tl.int64) * size * width
            for start in range(0, width, BLOCK_OUT):
                outs = start + tl.arange(0, BLOCK_OUT)
                out_ok = outs < width
                zj = tl.load(zh_ptr + col_offsets[:, None] + outs[None, :], mask=col_ok[:, None] & out_ok[None, :],
                             other=0.0)
                target = out_base + row_offsets + outs[None, :]
                mask = row_ok[:, None] & out_ok[None, :]
                previous = tl.load(target, mask=mask, other=0.0)
                update = tl.dot(gap.to(DOT_DTYPE), zj.to(DOT_DTYPE), input_precision=PRECISION, out_dtype=compute)
                tl.store(target, previous + 4.0 * update, mask=mask)
    tl.store(partial_ptr + split.to(tl.int64) * tl.num_programs(0) + block_i, tl.sum(squares))


@triton.jit
def _gram_tile(zh_ptr, u_sorted_ptr, order_ptr, size, width, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (score-order row block, feature block) tile of program (r, d): the rows' input
    indices, their unit scores (column), the features and the mask."""
    positions = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    pos_ok = positions < size
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = pos_ok[:, None] & (cols < width)[None, :]
    index = tl.load(order_ptr + positions, mask=pos_ok, other=0).to(tl.int64)
    u = tl.load(u_sorted_ptr + positions, mask=pos_ok, other=0.0)[:, None]
    offsets = index[:, None] * width + cols[None, :]
    return offsets, cols, mask, u, tl.load(zh_ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _block_sums_kernel(zh_ptr, u_sorted_ptr, order_ptr, sums_ptr, weighted_sums_ptr, size, width,
                       BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scan, pass 1. Program (r, d): ``sum z`` and ``sum u z`` over score-order row block r,
    for features block d; every block at once."""
    _, cols, mask, u, z = _gram_tile(zh_ptr, u_sorted_ptr, order_ptr, size, width, BLOCK_R, BLOCK_D)
    out = tl.program_id(0).to(tl.int64) * width + cols
    col_ok = cols < width
    tl.store(sums_ptr + out, tl.sum(z, axis=0), mask=col_ok)
    tl.store(weighted_sums_ptr + out, tl.sum(u * z, axis=0), mask=col_ok)


@triton.jit
def _prefix_kernel(zh_ptr, u_sorted_ptr, order_ptr, carry_ptr, weighted_carry_ptr, total_ptr, weighted_total_ptr,
                   grad_ptr, partial_ptr, size, width, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                   WITH_GRAD: tl.constexpr):
    """Scan, pass 3 (pass 2 is the scan of the block sums). Program (r, d): the prefix sums
    ``P0, P1`` of its rows from the carry of the blocks before, then ``(M Zh)_k``, its
    share of ``sum C*M`` and the gradient ``Zh G - M Zh`` in place."""
    offsets, cols, mask, u, z = _gram_tile(zh_ptr, u_sorted_ptr, order_ptr, size, width, BLOCK_R, BLOCK_D)
    col_ok = cols < width
    block = tl.program_id(0).to(tl.int64) * width + cols
    total = tl.load(total_ptr + cols, mask=col_ok, other=0.0)
    weighted_total = tl.load(weighted_total_ptr + cols, mask=col_ok, other=0.0)
    prefix = tl.load(carry_ptr + block, mask=col_ok, other=0.0)[None, :] + tl.cumsum(z, axis=0)
    weighted_prefix = tl.load(weighted_carry_ptr + block, mask=col_ok, other=0.0)[None, :] + tl.cumsum(u * z, axis=0)
    # (M Zh)_k = T0 - sum_j |u_k - u_j| z_j = T0 - (2 (u_k P0_k - P1_k) + T1 - u_k T0); tied
    # scores add 0 on either side, so inclusive prefixes are exact.
    similar = total[None, :] - (2.0 * (u * prefix - weighted_prefix) + weighted_total[None, :] - u * total[None, :])
    if WITH_GRAD:
        zg = tl.load(grad_ptr + offsets, mask=mask, other=0.0)
        tl.store(grad_ptr + offsets, 4.0 * (zg - similar), mask=mask)
    partial = tl.sum(tl.sum(tl.where(mask, z * similar, 0.0), axis=1), axis=0)
    tl.store(partial_ptr + tl.program_id(0).to(tl.int64) * tl.num_programs(1) + tl.program_id(1), partial)


@triton.jit
def _summed_splits(grad_zh_ptr, offsets, mask, splits, split_stride, compute: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """A tile of ``dL/dZh``, summed over the direct kernel's column splits."""
    g = tl.zeros([BLOCK_R, BLOCK_D], dtype=compute)
    for split in range(0, splits):
        g += tl.load(grad_zh_ptr + split * split_stride + offsets, mask=mask, other=0.0)
    return g


@triton.jit
def _normalize_backward_kernel(zh_ptr, row_norm_ptr, norm_ptr, grad_zh_ptr, scale_ptr, floor_ptr, out_ptr, rows_total,
                               width, splits, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out = scale * (g - zh <zh, g>) / norm, with g summed over the column splits."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < rows_total
    compute = zh_ptr.dtype.element_ty
    split_stride = rows_total.to(tl.int64) * width
    floor = tl.load(floor_ptr)
    along = tl.zeros([BLOCK_R, BLOCK_D], dtype=compute)
    for start in range(0, width, BLOCK_D):
        offsets, mask = _row_tile(rows, row_ok, start, width, BLOCK_D)
        g = _summed_splits(grad_zh_ptr, offsets, mask, splits, split_stride, compute, BLOCK_R, BLOCK_D)
        along += tl.load(zh_ptr + offsets, mask=mask, other=0.0) * g
    row_norm = tl.load(row_norm_ptr + rows, mask=row_ok, other=0.0)
    # Where the norm was floored, zh = z / floor is linear in z: no projection.
    projection = tl.where(row_norm >= floor, tl.sum(along, axis=1), 0.0)
    scale = tl.load(scale_ptr) / tl.load(norm_ptr + rows, mask=row_ok, other=1.0)
    for start in range(0, width, BLOCK_D):  # second pass: the projection needs the whole row
        offsets, mask = _row_tile(rows, row_ok, start, width, BLOCK_D)
        g = _summed_splits(grad_zh_ptr, offsets, mask, splits, split_stride, compute, BLOCK_R, BLOCK_D)
        zh = tl.load(zh_ptr + offsets, mask=mask, other=0.0)
        value = (g - zh * projection[:, None]) * scale[:, None]
        tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)


def unit_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``u = (s - min s) / R`` on the device (0 where the range R is 0), and ``R > 0`` [Eq. 6]."""
    low, high = torch.aminmax(scores)
    has_range = high > low
    return (scores - low) / torch.where(has_range, high - low, torch.ones_like(high)), has_range


def label_similarity_squared_sum(u: torch.Tensor) -> torch.Tensor:
    """``sum_ij (1 - |u_i - u_j|)^2`` in O(B log B): ``B^2 - 2 sum_ij |u_i - u_j| +
    sum_ij (u_i - u_j)^2``, the absolute gaps from the sorted scores' ranks."""
    size = u.numel()
    ranks = torch.arange(size, device=u.device, dtype=u.dtype)
    absolute_gaps = 2 * torch.sum(torch.sort(u).values * (2 * ranks - (size - 1)))
    squared_gaps = 2 * size * torch.sum((u - u.mean()) ** 2)
    return size * size - 2 * absolute_gaps + squared_gaps


def _direct_blocks(size: int, width: int) -> tuple[int, int]:
    """(row block, column splits): enough programs to fill a GPU at small B."""
    block = 32 if size <= 256 else 64
    row_blocks = triton.cdiv(size, block)
    column_blocks = triton.cdiv(size, block)
    splits = max(1, min(column_blocks, 256 // max(row_blocks, 1)))
    while column_blocks % splits:
        splits -= 1
    return block, splits


GRAM_BLOCK_ROWS, GRAM_BLOCK_WIDTH = 64, 32  # a tile of the blocked scan: 64 rows x 128 bytes of float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for float32 tiles, as torch's own matmuls choose it:
    ``torch.get_float32_matmul_precision()`` "highest" is IEEE, "high" and "medium" TF32
    (half and float64 tiles ignore it)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _gram_sum_cm_and_grad(zh: torch.Tensor, u: torch.Tensor, grad_zh: torch.Tensor,
                          with_grad: bool) -> torch.Tensor:
    """``sum_ij C_ij M_ij`` by the blocked scan over the rows in score order (per-block sums
    in parallel, a scan of the block sums, then every block's prefix sums at once); with
    ``with_grad``, ``grad_zh`` (holding ``Zh G``) becomes ``4 (Zh G - M Zh)``."""
    size, width = zh.shape
    order = torch.argsort(u, stable=True)
    u_sorted = u[order]
    grid = (triton.cdiv(size, GRAM_BLOCK_ROWS), triton.cdiv(width, GRAM_BLOCK_WIDTH))
    sums = torch.empty((grid[0], width), device=zh.device, dtype=zh.dtype)
    weighted_sums = torch.empty_like(sums)
    _block_sums_kernel[grid](zh, u_sorted, order, sums, weighted_sums, size, width,
                             BLOCK_R=GRAM_BLOCK_ROWS, BLOCK_D=GRAM_BLOCK_WIDTH)
    prefix, weighted_prefix = torch.cumsum(sums, 0), torch.cumsum(weighted_sums, 0)
    partial = torch.empty(grid, device=zh.device, dtype=zh.dtype)
    _prefix_kernel[grid](zh, u_sorted, order, prefix - sums, weighted_prefix - weighted_sums, prefix[-1],
                         weighted_prefix[-1], grad_zh, partial, size, width, BLOCK_R=GRAM_BLOCK_ROWS,
                         BLOCK_D=GRAM_BLOCK_WIDTH, WITH_GRAD=with_grad)
    return partial.sum()


def loss_and_grad(features: torch.Tensor, scores: torch.Tensor, form: str,
                  with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FLSA loss (0-d, float32 or float64) and, when asked, its gradient w.r.t. the
    (B, D) ``features`` in their dtype. ``form`` is ``"direct"`` or ``"gram"``."""
    z = features.detach().contiguous()
    size, width = z.shape
    compute = compute_dtype(z.dtype)
    device = z.device
    floor = device_scalars(z, compute, NORM_FLOOR)
    zh = torch.empty((size, width), device=device, dtype=compute)
    row_norm = torch.empty(size, device=device, dtype=compute)
    norm = torch.empty(size, device=device, dtype=compute)
    block_rows, block_width = 32, min(128, triton.next_power_of_2(width))
    _normalize_kernel[(triton.cdiv(size, block_rows),)](z, zh, row_norm, norm, floor, size, width,
                                                         BLOCK_R=block_rows, BLOCK_D=block_width)
    u, has_range = unit_scores(scores.detach().to(compute))

    splits = 1
    if form == "direct":
        block, splits = _direct_blocks(size, width)
        row_blocks = triton.cdiv(size, block)
        grad_zh = torch.zeros((splits, size, width), device=device, dtype=compute) if with_grad else zh
        partial = torch.empty((splits, row_blocks), device=device, dtype=compute)
        dot_dtype = _DOT_DTYPES.get(z.dtype, tl.float64 if compute == torch.float64 else tl.float32)
        _direct_kernel[(row_blocks, splits)](
            zh, u, grad_zh, partial, size, width, triton.cdiv(size, block) // splits,
            BLOCK_I=block, BLOCK_J=block, BLOCK_K=32, BLOCK_OUT=64, WITH_GRAD=with_grad, DOT_DTYPE=dot_dtype,
            PRECISION=dot_precision(z.dtype),
        )
        total = partial.sum()
    else:
        gram = zh.T @ zh
        sum_c2 = torch.sum(gram * gram)
        grad_zh = zh @ gram if with_grad else zh
        total = sum_c2 - 2 * _gram_sum_cm_and_grad(zh, u, grad_zh, with_grad) + label_similarity_squared_sum(u)

    zero = torch.zeros((), device=device, dtype=compute)
    loss = torch.where(has_range, total / (size * size), zero)
    if not with_grad:
        return loss, None
    scale = torch.where(has_range, torch.full((), 1.0 / (size * size), device=device, dtype=compute), zero)
    grad = torch.empty_like(z)
    _normalize_backward_kernel[(triton.cdiv(size, block_rows),)](
        zh, row_norm, norm, grad_zh, scale, floor, grad, size, width, splits,
        BLOCK_R=block_rows, BLOCK_D=block_width,
    )
    return loss, grad


class FLSAFunction(torch.autograd.Function):
    """The FLSA loss of (B, D) features, differentiable w.r.t. them (first order): the
    gradient is computed with the loss and kept for the backward."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, scores: torch.Tensor, form: str) -> torch.Tensor:
        loss, grad = loss_and_grad(features, scores, form, with_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else loss)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_output.to(grad.dtype) * grad, None, None


def flsa_loss(features: torch.Tensor, scores: torch.Tensor, form: str) -> torch.Tensor:
    """FLSA loss through the Triton kernels; ``features`` (B >= 2, D), ``scores`` (B,)."""
    return FLSAFunction.apply(features, scores, form)
