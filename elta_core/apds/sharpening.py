"""APDS's sharpening (Eqs. 7-8) and the selection of confident samples by a threshold on
the sharpened confidence: the predicted scores, the per-sample temperatures, the
sharpened distributions, and the kept pseudo-labels."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Sequence, Union

import numpy as np

from elta_core import _checks

Tensor = Any

DEFAULT_BETAS = (1.0, 1.1, 1.2, 1.25)
# The paper's grid (the authors' code), tuned for an ImageNet-pretrained Swin V2 on AVA. A
# small or young model's predictions are wider: its confidences may all sit below 0.7.
PAPER_THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90)
# "auto": the paper's grid, or, when no cell of it selects min_selected samples,
# thresholds at these quantiles of the calibration set's own sharpened confidence.
DEFAULT_THRESHOLDS = "auto"
CONFIDENCE_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.9)
Thresholds = Union[Sequence[float], Literal["auto", "paper", "quantiles"]]
# exp(80) ~ 5.5e34 is finite in float32; past it a logit gap of 1e-30 already sends a
# level's sharpened logit below -5e4, so capping changes nothing but 0 * inf = NaN.
MAX_SHARPENING_EXPONENT = 80.0
DEFAULT_MIN_SELECTED = 11  # "more than 10" selected samples, as in the authors' code
PseudoLabel = Literal["prediction", "sharpened"]
# Eq. 10 trains on the sharpened distribution it thresholds; the authors' code on the
# unsharpened prediction ("prediction"). Why the default is "sharpened": docs/design.md.
DEFAULT_PSEUDO_LABEL: PseudoLabel = "sharpened"


class _Prediction(NamedTuple):
    logits: Tensor  # (N, C), compute dtype
    probs: Tensor  # unsharpened softmax
    scores: Tensor  # s_hat_i
    gap: Tensor  # |s_hat_i - s_bar| / score_scale
    bin_values: Tensor


def _validated_logits(logits: Tensor, bin_values: Any, score_scale: float, validate: bool):
    """Backend, float logits (N, C >= 2), the bin values as a tensor and the score scale."""
    backend, logits = _checks.tensor(logits, "logits")
    _checks.rank(backend, logits, "logits", (2,), "a 2-D array (N, C) of logits")
    logits = _checks.float_tensor(backend, logits, "logits", validate)
    num_bins = backend.shape(logits)[1]
    if num_bins < 2:
        raise ValueError(f"logits: expected at least 2 levels (N, C >= 2), got shape {backend.shape(logits)}")
    values = _checks.bin_values_for(backend, bin_values, num_bins, logits)
    return backend, logits, values, _checks.positive_number(score_scale, "score_scale")


def _validated_prediction(
    logits: Tensor, bin_values: Any, mean_score: float | None, score_scale: float, validate: bool
) -> tuple[Any, _Prediction]:
    """Check the inputs, then :func:`_prediction`."""
    backend, logits, values, score_scale = _validated_logits(logits, bin_values, score_scale, validate)
    return backend, _prediction(backend, logits, values, mean_score, score_scale)


def _prediction(backend, logits: Tensor, values: Tensor, mean_score: float | None, score_scale: float) -> _Prediction:
    """Softmax, predicted scores and gaps of already-checked logits."""
    probs = backend.softmax(logits, axis=1)
    scores = backend.matmul(probs, values)
    if mean_score is None:
        centre = backend.mean(scores) if backend.shape(scores)[0] else backend.constant(0.0, scores)
    else:
        centre = _checked_mean_score(mean_score)
    gap = backend.abs(scores - centre) / score_scale
    return _Prediction(logits, probs, scores, gap, values)


def _checked_mean_score(mean_score: float | None) -> float | None:
    return None if mean_score is None else _checks.finite_number(mean_score, "mean_score")


def _kernel(op: str, backend, logits: Tensor):
    """The kernel that runs ``op`` on ``logits``, or None: the reference
    (:mod:`elta_core.kernels.dispatch`)."""
    from elta_core.kernels import dispatch

    rows, width = backend.shape(logits)
    return dispatch.kernel(op, backend.name, logits, rows=rows, width=width)


def predicted_scores(logits: Tensor, bin_values: Any = None, *, validate: bool = True) -> Tensor:
    """Predicted scores ``s_hat_i = sum_c softmax(z_i)_c * bin_values[c]`` (paper 3.4), (N,)."""
    backend, logits, values, _ = _validated_logits(logits, bin_values, 1.0, validate)
    return backend.matmul(backend.softmax(logits, axis=1), values)


def _sharpened_logits(backend, prediction: _Prediction, beta: float) -> Tensor:
    # z / tau_i = z * exp(beta |s_hat_i - s_bar|) (authors' code); the row max is
    # subtracted first, which the softmax ignores. The exponent is capped at
    # MAX_SHARPENING_EXPONENT so the factor stays finite: the max entry stays 0 (not
    # 0 * inf = NaN) and every entry below it goes to -inf, a one-hot row.
    shifted = prediction.logits - backend.max(prediction.logits, axis=1, keepdims=True)
    exponent = beta * prediction.gap
    exponent = backend.where(exponent > MAX_SHARPENING_EXPONENT, backend.constant(MAX_SHARPENING_EXPONENT, exponent),
                             exponent)
    with np.errstate(over="ignore"):  # NumPy: a product past the float range is -inf, as intended
        return shifted * backend.reshape(backend.exp(exponent), (-1, 1))


def temperatures(
    logits: Tensor,
    beta: float,
    bin_values: Any = None,
    mean_score: float | None = None,
    *,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """Per-sample temperatures ``tau_i(beta) = exp(-beta |s_hat_i - s_bar|)`` [Eq. 8], (N,)."""
    beta = _checks.non_negative_number(beta, "beta")
    backend, prediction = _validated_prediction(logits, bin_values, mean_score, score_scale, validate)
    return backend.exp(-beta * prediction.gap)


def sharpen(
    logits: Tensor,
    beta: float,
    bin_values: Any = None,
    mean_score: float | None = None,
    *,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """Sharpened distributions ``softmax_c(z_ic / tau_i(beta))`` [Eqs. 7, 8].

    The softmax runs over the C levels of one sample (the paper's Eq. 7 writes a sum over
    the batch, a typo; see docs/design.md).

    Args:
        logits: (N, C) logits of a distribution head.
        beta: >= 0; larger sharpens the tails more, and 0 leaves the softmax as it is (the
            unsharpened ablation of ``elta compare``).
        bin_values: rating value of each level, length C (default ``1..C``).
        mean_score: ``s_bar``; default the mean predicted score of these N samples.
        score_scale: gaps ``|s_hat - s_bar|`` are divided by it (1 for a 1..10 scale).

    Returns:
        (N, C) probabilities. The argmax is kept and the max probability does not drop.
    """
    beta = _checks.non_negative_number(beta, "beta")
    backend, logits, values, score_scale = _validated_logits(logits, bin_values, score_scale, validate)
    mean_score = _checked_mean_score(mean_score)
    def reference():
        prediction = _prediction(backend, logits, values, mean_score, score_scale)
        return backend.softmax(_sharpened_logits(backend, prediction, beta), axis=1)

    return _run_rows(backend, logits, reference, lambda rows: rows(logits, values, beta, mean_score, score_scale)[0])


def _run_rows(backend, logits: Tensor, reference, kernel):
    """``kernel(sharpen_rows)`` on the row kernel where dispatch picks one, else ``reference()``."""
    from elta_core.kernels import dispatch

    return dispatch.run(_kernel("apds_rows", backend, logits), kernel, reference)


def _max_sharpened_prob(backend, prediction: _Prediction, beta: float) -> Tensor:
    """``max_c`` of the sharpened softmax, ``1 / sum_c exp(z'_c - max z')``, one exp per entry."""
    shifted = _sharpened_logits(backend, prediction, beta)
    return 1 / backend.sum(backend.exp(shifted), axis=1)


class Selection(NamedTuple):
    """Kept samples: their ``indices`` (K,) and ``labels`` (K, C) pseudo-label distributions."""

    indices: Tensor
    labels: Tensor


def _pseudo_labels(backend, prediction: _Prediction, beta: float, pseudo_label: PseudoLabel) -> Tensor:
    if pseudo_label == "prediction":
        return prediction.probs
    return backend.softmax(_sharpened_logits(backend, prediction, beta), axis=1)


def _check_pseudo_label(pseudo_label: str) -> None:
    if pseudo_label not in ("prediction", "sharpened"):
        raise ValueError(f"pseudo_label: expected 'prediction' or 'sharpened', got {pseudo_label!r}")


def select(
    logits: Tensor,
    beta: float,
    threshold: float,
    bin_values: Any = None,
    mean_score: float | None = None,
    *,
    pseudo_label: PseudoLabel = DEFAULT_PSEUDO_LABEL,
    strict: bool = False,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Selection:
    """Keep the samples whose sharpened max probability reaches ``threshold`` (Eq. 10).

    Args:
        logits: (N, C) logits of the unlabelled pool.
        beta, threshold: usually ``grid_search(...).beta`` and ``.threshold``.
        pseudo_label: ``"sharpened"`` (default, Eq. 10) labels a kept sample with its
            sharpened distribution, ``"prediction"`` (the authors' code) with the
            unsharpened prediction.
        strict: use ``>`` as the authors' code does instead of the paper's ``>=``.

    Returns:
        ``Selection(indices, labels)``; the score of a pseudo-label is
        ``labels @ bin_values``.
    """
    beta = _checks.non_negative_number(beta, "beta")
    threshold = _checks.probability_thresholds([threshold], "threshold")[0]
    _check_pseudo_label(pseudo_label)
    backend, logits, values, score_scale = _validated_logits(logits, bin_values, score_scale, validate)
    _checks.has_values(backend, logits, "logits", "which samples are selected")
    mean_score = _checked_mean_score(mean_score)

    def reference() -> Selection:
        prediction = _prediction(backend, logits, values, mean_score, score_scale)
        confidence = _max_sharpened_prob(backend, prediction, beta)
        kept = confidence > threshold if strict else confidence >= threshold
        indices = backend.from_numpy(backend.to_numpy(kept).nonzero()[0].astype("int64"), prediction.logits)
        return Selection(indices, backend.take(_pseudo_labels(backend, prediction, beta, pseudo_label), indices, axis=0))

    def kernel(sharpen_rows) -> Selection:
        sharpened, _, kept = sharpen_rows(logits, values, beta, mean_score, score_scale, threshold, strict)
        indices = kept.nonzero().reshape(-1)
        if pseudo_label == "sharpened":
            return Selection(indices, sharpened[indices])
        return Selection(indices, backend.softmax(backend.take(logits, indices, axis=0), axis=1))

    return _run_rows(backend, logits, reference, kernel)


def keep_most_confident(
    logits: Tensor,
    selection: Selection,
    beta: float,
    max_selected: int,
    bin_values: Any = None,
    mean_score: float | None = None,
    *,
    score_scale: float = 1.0,
    validate: bool = True,
) -> Selection:
    """At most ``max_selected`` rows of a :func:`select` result on the same ``logits``:
    the highest sharpened max probabilities [Eq. 8] first, ties to the earlier row,
    returned in pool order. This is this library's rule for pools much larger than the
    labelled set (the authors' code has no cap; the paper's appendix A.2 limits the size
    of the unlabelled pool instead); see ``docs/design.md``."""
    if isinstance(max_selected, bool) or not isinstance(max_selected, int) or max_selected < 0:
        raise ValueError(f"max_selected: expected an int >= 0, got {max_selected!r}")
    beta = _checks.non_negative_number(beta, "beta")
    backend, prediction = _validated_prediction(logits, bin_values, mean_score, score_scale, validate)
    _checks.has_values(backend, prediction.logits, "logits", "which samples are kept")
    if backend.shape(selection.indices)[0] <= max_selected:
        return selection
    confidence = backend.take(_max_sharpened_prob(backend, prediction, beta), selection.indices)
    order = backend.argsort(confidence, axis=0, descending=True)[:max_selected]
    keep = backend.take(order, backend.argsort(order, axis=0))  # back to pool order
    return Selection(backend.take(selection.indices, keep), backend.take(selection.labels, keep, axis=0))
