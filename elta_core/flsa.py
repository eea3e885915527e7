"""FLSA, Feature-Label Similarity Alignment (paper 3.3).

The loss pulls the cosine-similarity matrix of the features (Eq. 5) towards the
similarity matrix of the labels (Eq. 6):
``L_flsa = mean_{i,j} (C_ij - M_ij)^2`` over all B*B entries, diagonal included.

Two exact forms, picked by shape (``form="auto"``):

- ``"direct"`` forms the B x B matrices: O(B^2 D) time, O(B^2) memory. Cheaper for B <= D.
- ``"gram"`` never forms a B x B matrix (docs/design.md): ``sum C^2`` is the squared Frobenius
  norm of the D x D Gram matrix ``Zh^T Zh``, and ``sum C*M`` and ``sum M^2`` come from
  prefix sums in score order. O(B D^2 + B log B) time, O(B D + D^2) memory.

Both are written in backend operations and return the loss with its exact gradient
(first order), attached to the features through the backend, so no autograd graph of
intermediates is kept. Both accumulate in float32 at least (bf16/fp16 are upcast; the
Triton kernel takes them as they are and accumulates in float32).
"""

from __future__ import annotations

from typing import Any, Literal

from elta_core import _checks

Tensor = Any

__all__ = ["alignment_loss", "feature_similarity", "label_similarity", "normalized_features"]

NORM_FLOOR = 1e-8
Form = Literal["auto", "direct", "gram"]


def _features_2d(backend, features: Tensor, validate: bool) -> Tensor:
    shape = _checks.rank(backend, features, "features", range(1, 9), "a batch (B, D) or (B, ...) of features")
    if not backend.is_floating(features):
        raise ValueError(f"features: expected a floating dtype, got {getattr(features, 'dtype', None)}")
    features = _checks.float_tensor(backend, features, "features", validate)
    width = 1
    for d in shape[1:]:
        width *= d
    return backend.reshape(features, (shape[0], width))


def normalized_features(features: Tensor, *, validate: bool = True) -> Tensor:
    """Rows scaled to unit L2 norm, trailing dimensions flattened (B, D).

    The norm is floored at ``NORM_FLOOR``, so a zero vector stays zero and has a zero (not
    NaN) gradient.
    """
    backend, features = _checks.tensor(features, "features")
    return _normalize(backend, _features_2d(backend, features, validate))


def _normalize(backend, z: Tensor) -> Tensor:
    return _normalize_with_norms(backend, z)[0]


def _normalize_with_norms(backend, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``zh``, the row norms and the floored norms (kept for the backward).

    The square of a float32 row of norm past about 1.8e19 overflows, and every such row
    would count as zero: then each row is divided by its largest entry before it is
    squared. Where looking at the squares costs nothing (NumPy, the CPU, outside
    ``torch.compile``) that happens only when one overflowed; elsewhere always (a look
    would wait for the device, or break the compiled graph). Squares too small for the
    dtype belong to rows below the floor, which count as zero either way."""
    squared = backend.sum(z * z, axis=1, keepdims=True)
    if _looking_is_free(backend, z) and backend.all_finite_host(squared):
        norm = backend.sqrt(squared)
    else:
        largest = backend.max(backend.abs(z), axis=1, keepdims=True)
        scale = backend.where(largest > 0, largest, backend.constant(1.0, largest))
        scaled = z / scale
        norm = backend.sqrt(backend.sum(scaled * scaled, axis=1, keepdims=True)) * scale
    floored = backend.maximum(norm, NORM_FLOOR)
    return z / floored, norm, floored


def _looking_is_free(backend, z: Tensor) -> bool:
    from elta_core.kernels import dispatch

    return dispatch._device_type(backend.name, z) == "cpu" and not dispatch._compiling(backend.name)


def unit_scores(backend, s: Tensor) -> tuple[Tensor, Tensor]:
    """Scores rescaled to [0, 1] by the batch range, and whether that range is > 0.

    ``M_ij = 1 - |u_i - u_j|`` with ``u = (s - min s) / R`` is Eq. 6. A zero range gives
    ``u = 0`` (every pair fully similar) instead of 0/0.
    """
    low = backend.min(s)
    spread = backend.max(s) - low
    has_range = spread > 0
    safe = backend.where(has_range, spread, backend.constant(1.0, spread))
    return (s - low) / safe, has_range


def feature_similarity(features: Tensor, *, validate: bool = True) -> Tensor:
    """Cosine similarity matrix ``C_ij = cos(z_i, z_j)`` [Eq. 5], shape (B, B).

    A zero feature vector has similarity 0 with every sample, itself included.
    """
    backend, features = _checks.tensor(features, "features")
    zh = _normalize(backend, _features_2d(backend, features, validate))
    return backend.matmul(zh, backend.transpose(zh))


def label_similarity(scores: Tensor, *, bin_values: Any = None, validate: bool = True) -> Tensor:
    """Label similarity ``M_ij = 1 - |s_i - s_j| / (max_k s_k - min_k s_k)`` [Eq. 6], (B, B).

    ``scores`` may be (B,) / (B, 1) scores or (B, C) distributions (their mean scores are
    used). When all scores are equal the matrix is all ones.
    """
    backend, scores = _checks.tensor(scores, "scores")
    s = _checks.scores(backend, scores, "scores", bin_values, validate)
    u, _ = unit_scores(backend, s)
    return 1 - backend.abs(backend.reshape(u, (-1, 1)) - backend.reshape(u, (1, -1)))


def _direct_sum_and_grad(backend, zh: Tensor, u: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``sum_ij (C_ij - M_ij)^2`` with the B x B matrices formed, and (when asked) its
    gradient ``4 (C - M) Zh`` w.r.t. ``Zh``."""
    cosine = backend.matmul(zh, backend.transpose(zh))
    similarity = 1 - backend.abs(backend.reshape(u, (-1, 1)) - backend.reshape(u, (1, -1)))
    gap = cosine - similarity
    return backend.sum(gap * gap), (4 * backend.matmul(gap, zh) if with_grad else None)


CHUNK_ROWS = 256  # the fewest rows of a chunk; a batch is walked in at most 32 chunks


def _chunks(size: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of rows: the gram form's B x D intermediates exist one
    chunk at a time, so its extra memory is the normalised features and the gradient,
    plus 1/32 of them."""
    step = max(CHUNK_ROWS, -(-size // 32))
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def _gram_sum_and_grad(backend, zh: Tensor, u: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``sum_ij (C_ij - M_ij)^2`` in O(B D^2 + B log B) with no B x B matrix, and (when
    asked) its gradient ``4 (Zh G - M Zh)`` w.r.t. ``Zh`` from the same prefix sums
    (docs/design.md). The rows are walked in chunks (in score order for the prefix sums,
    then in input order for the gradient), into one (B, D) buffer."""
    gram = backend.matmul(backend.transpose(zh), zh)
    sum_c2 = backend.sum(gram * gram)

    order = backend.argsort(u, axis=0)
    u_sorted = backend.take(u, order)

    # The totals T0 = sum_j z_j and T1 = sum_j u_j z_j, then the walk over the rows in
    # score order.
    total = backend.sum(zh, axis=0, keepdims=True)
    weighted_total = backend.matmul(backend.reshape(u, (1, -1)), zh)
    sum_cm, gradient = _gram_walk(backend, zh, gram, order, u_sorted, total, weighted_total, with_grad)
    return sum_c2 - 2 * sum_cm + sum_similarity_squared(backend, u, u_sorted), gradient


def _gram_walk(backend, zh: Tensor, gram: Tensor, order: Tensor, u_sorted: Tensor, total: Tensor,
               weighted_total: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``sum_k zh_k . (M Zh)_k`` from the prefix sums ``P0_k = sum_{m<=k} zh_m`` and ``P1_k =
    sum_{m<=k} u_m zh_m`` over the rows in score order, carried from chunk to chunk, and
    (when asked) the gradient ``4 (Zh G - M Zh)`` in input order."""
    size = backend.shape(zh)[0]
    chunks = _chunks(size)
    similar = zh * 0 if with_grad else None  # (M Zh)_k = sum_j (1 - |u_k - u_j|) z_j, in input order
    sum_cm, carry = 0, None
    for start, stop in chunks:
        rows = order[start:stop]
        z_sorted = backend.take(zh, rows, axis=0)
        u_column = backend.reshape(u_sorted[start:stop], (-1, 1))
        prefix = _prefix_sums(backend, z_sorted)
        weighted_prefix = _prefix_sums(backend, u_column * z_sorted)
        if carry is not None:
            prefix, weighted_prefix = prefix + carry[0], weighted_prefix + carry[1]
        carry = (prefix[-1:], weighted_prefix[-1:])
        # A_k = sum_j |u_k - u_j| z_j = 2 (u_k P0_k - P1_k) + T1 - u_k T0; tied scores add 0
        # on either side, so inclusive prefixes are exact.
        spread = 2 * (u_column * prefix - weighted_prefix) + weighted_total - u_column * total
        similar_sorted = total - spread
        sum_cm = sum_cm + backend.sum(z_sorted * similar_sorted)
        if with_grad:
            similar = backend.put_rows(similar, rows, similar_sorted)
    if not with_grad:
        return sum_cm, None
    positions = backend.arange(size, order)
    for start, stop in chunks:  # the gradient, written over (M Zh) row by row
        gradient = 4 * (backend.matmul(zh[start:stop], gram) - similar[start:stop])
        similar = backend.put_rows(similar, positions[start:stop], gradient)
    return sum_cm, similar


PREFIX_BLOCK = 64  # rows of the triangular matmul that replaces a running sum


def _prefix_sums(backend, x: Tensor) -> Tensor:
    """Running sums of the rows of ``x`` (n, D): ``cumsum`` along the rows is a slow strided
    walk on the CPU, so whole blocks of ``PREFIX_BLOCK`` rows are summed by one batched
    matmul with a lower-triangular matrix of ones, and the blocks' totals carried by a
    ``cumsum`` over n / PREFIX_BLOCK rows (the same sums, in another order)."""
    rows, width = backend.shape(x)
    whole = rows - rows % PREFIX_BLOCK
    if whole < 2 * PREFIX_BLOCK:
        return backend.cumsum(x, axis=0)
    import numpy as np

    lower = backend.cast_like(backend.from_numpy(np.tril(np.ones((PREFIX_BLOCK, PREFIX_BLOCK))), x), x)
    blocks = backend.matmul(lower, backend.reshape(x[:whole], (whole // PREFIX_BLOCK, PREFIX_BLOCK, width)))
    carried = backend.cumsum(blocks[:, -1, :], axis=0) - blocks[:, -1, :]  # the blocks before each block
    summed = backend.reshape(blocks + backend.reshape(carried, (-1, 1, width)), (whole, width))
    if whole == rows:
        return summed
    return backend.concat([summed, backend.cumsum(x[whole:], axis=0) + summed[-1:]], axis=0)


def sum_similarity_squared(backend, u: Tensor, u_sorted: Tensor | None = None) -> Tensor:
    """``sum_ij M_ij^2`` from the unit scores alone, in O(B log B):
    ``B^2 - 2 sum_ij |u_i - u_j| + sum_ij (u_i - u_j)^2`` (the sum of absolute gaps from
    the sorted scores and their ranks)."""
    size = backend.shape(u)[0]
    if u_sorted is None:
        u_sorted = backend.take(u, backend.argsort(u, axis=0))
    ranks = backend.cast_like(backend.arange(size, u), u)
    sum_abs = 2 * backend.sum(u_sorted * (2 * ranks - (size - 1)))
    centred = u - backend.mean(u)
    return size * size - 2 * sum_abs + 2 * size * backend.sum(centred * centred)


def _normalize_backward(backend, zh: Tensor, row_norm: Tensor, norm: Tensor, grad_zh: Tensor,
                        has_range: Tensor) -> Tensor:
    """Chain ``dL/dZh`` through ``zh = z / max(|z|, floor)`` to ``dL/dz``, divided by B^2
    (0 where the scores have no range), chunk by chunk, written over ``grad_zh``."""
    size = backend.shape(zh)[0]
    zero = backend.constant(0.0, grad_zh)
    positions = backend.arange(size, norm)
    for start, stop in _chunks(size):
        z, g = zh[start:stop], grad_zh[start:stop]
        along = backend.sum(z * g, axis=1, keepdims=True)
        # Where the norm was floored, zh = z / floor is linear in z: no projection.
        along = backend.where(row_norm[start:stop] >= NORM_FLOOR, along, backend.constant(0.0, along))
        # one factor a row (1 / (norm B^2), or 0), so that the (rows, D) arithmetic is two passes
        factor = backend.where(has_range, 1 / (norm[start:stop] * (size * size)), zero)
        rows = (g - z * along) * factor
        grad_zh = backend.put_rows(grad_zh, positions[start:stop], rows)
    return grad_zh


def alignment_loss(
    features: Tensor,
    scores: Tensor,
    *,
    bin_values: Any = None,
    form: Form = "auto",
    validate: bool = True,
) -> Tensor:
    """The FLSA loss ``mean_{i,j} (C_ij - M_ij)^2`` [Eqs. 5, 6].

    Args:
        features: (B, D) or (B, ...) features; trailing dims are flattened.
        scores: (B,) / (B, 1) scores or (B, C) distributions.
        form: ``"direct"`` (B x B matrices), ``"gram"`` (no B x B matrix) or ``"auto"``
            (``"gram"`` when B > D). All forms are exact; which implementation runs
            (reference, native CPU or Triton kernel) is decided by
            :mod:`elta_core.kernels.dispatch`.
        validate: check for NaN/Inf and shapes (reads values on the host).

    Returns:
        A scalar, float32 (float64 for float64 features). For B < 2 or when all scores
        are equal it is 0 with a zero gradient (the authors' code gives NaN; see
        ``docs/design.md``).
    """
    if form not in ("auto", "direct", "gram"):
        raise ValueError(f"form: expected 'auto', 'direct' or 'gram', got {form!r}")
    backend, features = _checks.tensor(features, "features")
    _, scores = _checks.tensor(scores, "scores")
    z = _features_2d(backend, features, validate)
    s = _checks.scores(backend, scores, "scores", bin_values, validate)
    size, width = backend.shape(z)
    _checks.same_length("features", size, "scores", backend.shape(s)[0])
    if size < 2:
        return backend.sum(z) * 0
    from elta_core.kernels import dispatch

    resolved = dispatch.flsa_form(size, width) if form == "auto" else form
    chosen = dispatch.kernel("flsa", backend.name, z, rows=size, width=width, form=form)
    # Half features reach the Triton kernel as they are (its tiles run on the tensor cores,
    # accumulating in float32); everything else gets them at float32 at least.
    kernel_z = backend.reshape(features, (size, width)) if chosen is not None and chosen.impl == "triton" else z
    return dispatch.run(chosen, lambda flsa_loss: flsa_loss(kernel_z, backend.cast_like(s, z), resolved),
                        lambda: _reference_loss(backend, z, s, resolved))


def _reference_loss(backend, z: Tensor, s: Tensor, form: str) -> Tensor:
    """The loss and its gradient computed together, outside the framework's autograd (no
    graph of B x D intermediates is kept), the gradient attached to ``z``. The gradient is
    skipped when nothing will ask for it (NumPy, no_grad, features without grad)."""
    size = backend.shape(z)[0]
    with_grad = backend.needs_gradient(z)
    zh, row_norm, norm = _normalize_with_norms(backend, backend.stop_gradient(z))
    u, has_range = unit_scores(backend, backend.cast_like(backend.stop_gradient(s), zh))
    sum_and_grad = _gram_sum_and_grad if form == "gram" else _direct_sum_and_grad
    total, grad_zh = sum_and_grad(backend, zh, u, with_grad)
    zero = backend.constant(0.0, total)
    loss = backend.where(has_range, total / (size * size), zero)
    if not with_grad:
        return loss
    return backend.with_gradient(loss, z, _normalize_backward(backend, zh, row_norm, norm, grad_zh, has_range))
