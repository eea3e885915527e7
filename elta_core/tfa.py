"""TFA, Tail Feature Augmentation (paper 3.2).

Label-guided mixup in feature space: the first sample of a pair is drawn with a
probability that grows with its distance from the batch mean score (Eq. 2), its
partner prefers samples with a close score (Eq. 3), and the mixing factor leans to
the rarer of the two (Eq. 4). Mixed samples (Eq. 1) are appended to the batch.

``tau1`` and ``tau2`` are in label units (defaults for scores on 1..10). For another
score range, rescale them with it, or pass ``score_scale``: scores are divided by it
before the temperatures apply.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np

from elta_core import _checks

Tensor = Any

__all__ = [
    "Pairs",
    "augment",
    "mix",
    "mix_factor",
    "partner_probs",
    "sample_pairs",
    "sampling_probs",
]

DEFAULT_TAU1 = 0.2
DEFAULT_TAU2 = 4.0
DEFAULT_EPS = 1e-2


class Pairs(NamedTuple):
    """Drawn pairs: first indices ``i``, partners ``j`` and mixing factors ``lam`` (Eq. 4)."""

    i: Tensor
    j: Tensor
    lam: Tensor


def _prepare_scores(scores: Tensor, bin_values: Any, score_scale: float, validate: bool):
    backend, scores = _checks.tensor(scores, "scores")
    s = _checks.scores(backend, scores, "scores", bin_values, validate)
    s = backend.stop_gradient(s)
    if score_scale != 1.0:
        s = s / _checks.positive_number(score_scale, "score_scale")
    return backend, s


def _tail_logits(backend, s: Tensor, tau1: float) -> Tensor:
    """``|s_bar - s_i| / tau1``, the logits of Eq. 2."""
    return backend.abs(s - backend.mean(s)) / tau1


def sampling_probs(
    scores: Tensor,
    tau1: float = DEFAULT_TAU1,
    *,
    bin_values: Any = None,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """Probability P(i) that sample i is the first of a pair [Eq. 2].

    ``P(i) = softmax_i(|s_bar - s_i| / tau1)`` with ``s_bar`` the batch mean score.

    Args:
        scores: (B,) or (B, 1) scores, or (B, C) distributions (their mean score is used).
        tau1: temperature in label units, > 0. Smaller favours the tails more.

    Returns:
        (B,) probabilities summing to 1 (uniform when all scores are equal).
    """
    tau1 = _checks.positive_number(tau1, "tau1")
    backend, s = _prepare_scores(scores, bin_values, score_scale, validate)
    if backend.shape(s)[0] == 0:
        return s
    # Max-subtracted softmax: accurate to an ulp, where exp(x - logsumexp) loses ~|x| ulps.
    return backend.softmax(_tail_logits(backend, s, tau1), axis=0)


def _partner_logits(backend, s_first: Tensor, s: Tensor, first: Tensor, tau2: float, eps: float):
    """Logits of Eq. 3 for the rows ``first``, with ``-inf`` on the own column."""
    gap = backend.abs(backend.reshape(s_first, (-1, 1)) - backend.reshape(s, (1, -1)))
    logits = tau2 / (gap + eps)
    columns = backend.reshape(backend.arange(backend.shape(s)[0], s), (1, -1))
    own = columns == backend.reshape(first, (-1, 1))
    return backend.where(own, backend.constant(float("-inf"), logits), logits)


def partner_probs(
    scores: Tensor,
    tau2: float = DEFAULT_TAU2,
    eps: float = DEFAULT_EPS,
    *,
    bin_values: Any = None,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """Partner probabilities P(j|i) of Eq. 3, as a (B, B) matrix with row i = P(.|i).

    ``P(j|i) = softmax_{j != i}(tau2 / (|s_i - s_j| + eps))`` and ``P(i|i) = 0``. The paper
    has no ``eps``; the authors' code adds 1e-2 so that tied scores stay finite. Computed
    with the row maximum subtracted: with tau2=4 and a gap of 0.01 the logit is ~200.

    Returns:
        (B, B) matrix, rows summing to 1, zero diagonal. For B < 2 there is no partner
        and the matrix is all zeros.
    """
    tau2 = _checks.positive_number(tau2, "tau2")
    eps = _checks.positive_number(eps, "eps")
    backend, s = _prepare_scores(scores, bin_values, score_scale, validate)
    size = backend.shape(s)[0]
    if size < 2:
        return backend.reshape(s, (size, 1)) * backend.reshape(s, (1, size)) * 0
    logits = _partner_logits(backend, s, s, backend.arange(size, s), tau2, eps)
    return backend.softmax(logits, axis=1)


def _mix_factor_from_scores(backend, s: Tensor, i: Tensor, j: Tensor, tau1: float) -> Tensor:
    # P(i) / (P(i) + P(j)) = sigmoid(log P(i) - log P(j)); the normaliser of Eq. 2 cancels.
    tail = _tail_logits(backend, s, tau1)
    return backend.sigmoid(backend.take(tail, i) - backend.take(tail, j))


def _indices(backend, idx: Any, like: Tensor, size: int, name: str, validate: bool = True) -> Tensor:
    """Integer index tensor on the device of ``like``, checked (on the host, when
    ``validate``) to lie in [0, size)."""
    index_backend, idx = _checks.tensor(idx, name)
    if index_backend is not backend:
        idx = backend.from_numpy(index_backend.to_numpy(idx), like)
    if not backend.is_integer(idx):
        raise ValueError(f"{name}: expected integer indices, got dtype {getattr(idx, 'dtype', None)}")
    _checks.rank(backend, idx, name, (1,), "a 1-D array of indices")
    if validate and backend.shape(idx)[0] and backend.has_values(idx) and (backend.min_host(idx) < 0 or backend.max_host(idx) >= size):
        raise ValueError(f"{name}: expected indices in [0, {size}), got values outside")
    return idx


def mix_factor(
    scores: Tensor,
    i: Tensor,
    j: Tensor,
    tau1: float = DEFAULT_TAU1,
    *,
    bin_values: Any = None,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """Mixing factor ``lambda = P(i) / (P(i) + P(j))`` of Eq. 4, P from Eq. 2.

    Computed as ``sigmoid(log P(i) - log P(j))``: the sample farther from the batch
    mean gets the larger weight. Returns (K,) values in (0, 1).
    """
    tau1 = _checks.positive_number(tau1, "tau1")
    backend, s = _prepare_scores(scores, bin_values, score_scale, validate)
    size = backend.shape(s)[0]
    i = _indices(backend, i, s, size, "i")
    j = _indices(backend, j, s, size, "j")
    _checks.same_length("i", backend.shape(i)[0], "j", backend.shape(j)[0])
    return _mix_factor_from_scores(backend, s, i, j, tau1)


def resolve_num_pairs(num_pairs: int | float, batch_size: int) -> int:
    """``num_pairs`` as a count: an int, or a float fraction of the batch in (0, 1]."""
    if isinstance(num_pairs, bool):
        raise ValueError(f"num_pairs: expected an int or a fraction in (0, 1], got {num_pairs!r}")
    if isinstance(num_pairs, float):
        if not 0.0 < num_pairs <= 1.0:
            raise ValueError(f"num_pairs: expected a fraction in (0, 1] or an int, got {num_pairs!r}")
        return max(1, round(num_pairs * batch_size)) if batch_size >= 2 else 0
    try:
        count = int(num_pairs)
    except (TypeError, ValueError):
        raise ValueError(f"num_pairs: expected an int or a fraction in (0, 1], got {num_pairs!r}") from None
    if count != num_pairs or count < 0:
        raise ValueError(f"num_pairs: expected a non-negative int or a fraction in (0, 1], got {num_pairs!r}")
    if count > batch_size:
        raise ValueError(f"num_pairs: expected at most the batch size {batch_size}, got {count}")
    return count


def sample_pairs(
    scores: Tensor,
    num_pairs: int | float,
    tau1: float = DEFAULT_TAU1,
    tau2: float = DEFAULT_TAU2,
    eps: float = DEFAULT_EPS,
    seed: Any = None,
    *,
    bin_values: Any = None,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Pairs:
    """Draw TFA pairs: first indices from Eq. 2 without replacement, partners from Eq. 3.

    Uses the Gumbel-top-k trick, which draws without replacement exactly like sequential
    sampling, and Gumbel-max for the partners; one pass, no host loop.

    Args:
        scores: (B,) / (B, 1) scores or (B, C) distributions.
        num_pairs: how many pairs, an int <= B or a fraction of B in (0, 1].
        seed: None (the framework's global generator), an int, a
            ``numpy.random.Generator`` or a ``torch.Generator``. The same seed draws the
            same pairs.

    Returns:
        ``Pairs(i, j, lam)``: int64 indices (K,), partners (K,), mixing factors (K,) from
        Eq. 4. Empty when B < 2 (no mixing; docs/design.md).
    """
    tau1 = _checks.positive_number(tau1, "tau1")
    tau2 = _checks.positive_number(tau2, "tau2")
    eps = _checks.positive_number(eps, "eps")
    backend, s = _prepare_scores(scores, bin_values, score_scale, validate)
    size = backend.shape(s)[0]
    count = resolve_num_pairs(num_pairs, size)
    if size < 2 or count == 0:
        empty = backend.arange(0, s)
        return Pairs(empty, empty, s[:0])
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seed = np.random.default_rng(int(seed))  # one stream for both draws below
    keys = _tail_logits(backend, s, tau1) + backend.gumbel((size,), s, seed)
    first = backend.argsort(keys, axis=0, descending=True)[:count]
    logits = _partner_logits(backend, backend.take(s, first), s, first, tau2, eps)
    partner = backend.argmax(logits + backend.gumbel((count, size), s, seed), axis=1)
    return Pairs(first, partner, _mix_factor_from_scores(backend, s, first, partner, tau1))


def mix(
    features: Tensor,
    labels: Tensor,
    i: Tensor,
    j: Tensor,
    lam: Tensor,
    *,
    mode: Literal["append", "replace"] = "append",
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mix pairs of samples [Eq. 1] and return the extended batch.

    ``z_mix = lam * z_i + (1 - lam) * z_j`` and ``y_mix = lam * y_i + (1 - lam) * y_j``.

    Args:
        features: (B, ...) features (any trailing shape, e.g. images for pixel mixup).
        labels: (B,), (B, 1) scores or (B, C) distributions.
        i, j, lam: pairs as returned by :func:`sample_pairs`.
        mode: ``"append"`` (authors' code) adds the K mixed samples after the batch,
            giving B + K rows; ``"replace"`` writes each mixed sample over its first
            sample ``i`` (the ``i`` must then be distinct), keeping B rows.

    Returns:
        ``(features, labels)`` in the dtypes of the inputs (labels at least float32).
    """
    if mode not in ("append", "replace"):
        raise ValueError(f"mode: expected 'append' or 'replace', got {mode!r}")
    backend, features, labels, i, j, lam = _checked_mix_inputs(features, labels, i, j, lam, validate)
    count = backend.shape(i)[0]
    if count == 0:
        return features, labels

    def mixed(x: Tensor) -> Tensor:
        weight = backend.reshape(backend.cast_like(lam, x), (count,) + (1,) * (len(backend.shape(x)) - 1))
        return weight * backend.take(x, i) + (1 - weight) * backend.take(x, j)

    if mode == "append":
        return (
            backend.concat([features, mixed(features)], axis=0),
            backend.concat([labels, mixed(labels)], axis=0),
        )
    if len(set(backend.to_numpy(i).tolist())) != count:
        raise ValueError("i: mode='replace' needs distinct first indices")
    return backend.index_set(features, i, mixed(features)), backend.index_set(labels, i, mixed(labels))


def _checked_mix_inputs(features: Tensor, labels: Tensor, i: Tensor, j: Tensor, lam: Tensor, validate: bool):
    """The backend and the inputs of :func:`mix`, checked and converted."""
    backend, features = _checks.tensor(features, "features")
    _, labels = _checks.tensor(labels, "labels")
    feature_shape = _checks.rank(backend, features, "features", range(1, 9), "a batch (B, ...) of features")
    label_shape = _checks.rank(backend, labels, "labels", (1, 2), "scores (B,), (B, 1) or distributions (B, C)")
    size = feature_shape[0]
    _checks.same_length("features", size, "labels", label_shape[0])
    if not backend.is_floating(features):
        raise ValueError(f"features: expected a floating dtype, got {getattr(features, 'dtype', None)}")
    _checks.finite(backend, features, "features", validate)
    labels = _checks.float_tensor(backend, labels, "labels", validate)
    i = _indices(backend, i, features, size, "i", validate)
    j = _indices(backend, j, features, size, "j", validate)
    lam_backend, lam = _checks.tensor(lam, "lam")
    if lam_backend is not backend:
        lam = backend.from_numpy(lam_backend.to_numpy(lam), features)
    _checks.rank(backend, lam, "lam", (1,), "a 1-D array of mixing factors")
    count = backend.shape(i)[0]
    _checks.same_length("i", count, "j", backend.shape(j)[0])
    _checks.same_length("i", count, "lam", backend.shape(lam)[0])
    if validate and count and backend.has_values(lam):
        _checks.finite(backend, lam, "lam")
        if backend.min_host(lam) < 0 or backend.max_host(lam) > 1:
            raise ValueError("lam: expected mixing factors in [0, 1]")
    return backend, features, labels, i, j, lam


def augment(
    features: Tensor,
    labels: Tensor,
    num_pairs: int | float = 1,
    tau1: float = DEFAULT_TAU1,
    tau2: float = DEFAULT_TAU2,
    eps: float = DEFAULT_EPS,
    seed: Any = None,
    *,
    bin_values: Any = None,
    score_scale: float = 1.0,
    mode: Literal["append", "replace"] = "append",
    validate: bool = True,
) -> tuple[Tensor, Tensor, Pairs]:
    """:func:`sample_pairs` then :func:`mix`: the whole TFA step on one batch.

    Returns ``(features, labels, pairs)``.
    """
    pairs = sample_pairs(
        labels, num_pairs, tau1, tau2, eps, seed,
        bin_values=bin_values, score_scale=score_scale, validate=validate,
    )
    features, labels = mix(features, labels, *pairs, mode=mode, validate=validate)
    return features, labels, pairs
