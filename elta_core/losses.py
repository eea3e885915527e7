"""Task losses and label conversions (paper 3.1).

All functions accept NumPy arrays or tensors of a loaded framework and return the
same kind. Half-precision inputs are computed in float32.
"""

from __future__ import annotations

from typing import Any, Literal

from elta_core import _checks
from elta_core.backends import get_backend

Tensor = Any

__all__ = [
    "distribution_from_counts", "emd", "label_scores", "mse", "output_scores", "scores_from_distribution", "task_loss",
]

OutputKind = Literal["logits", "probs", "score"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("logits", "probs", "score")


def scores_from_distribution(dist: Tensor, bin_values: Any = None, *, validate: bool = True) -> Tensor:
    """Mean score of each distribution, ``s = sum_j bin_values[j] * y[j]`` (paper 3.1).

    Args:
        dist: (N, C) probability mass functions over C ordered rating levels.
        bin_values: the rating value of each level, length C; default ``1..C``.

    Returns:
        (N,) scores.
    """
    backend, dist = _checks.tensor(dist, "dist")
    dist = _checks.distribution(backend, dist, "dist", validate)
    values = _checks.bin_values_for(backend, bin_values, backend.shape(dist)[1], dist)
    return backend.matmul(dist, values)


def score_std(dist: Tensor, bin_values: Any = None, *, validate: bool = True) -> Tensor:
    """Standard deviation of the score under each distribution,
    ``sqrt(sum_j y[j] (bin_values[j] - s)^2)`` with ``s`` its mean score (NIMA's second
    output: how much raters would disagree). Shapes as :func:`scores_from_distribution`.
    For reporting: its gradient at a one-hot distribution is infinite."""
    backend, dist = _checks.tensor(dist, "dist")
    dist = _checks.distribution(backend, dist, "dist", validate)
    values = _checks.bin_values_for(backend, bin_values, backend.shape(dist)[1], dist)
    mean = backend.matmul(dist, values)
    centred = backend.reshape(values, (1, -1)) - backend.reshape(mean, (-1, 1))
    return backend.sqrt(backend.sum(dist * centred * centred, axis=1))


def label_scores(labels: Tensor, bin_values: Any = None, *, validate: bool = True) -> Tensor:
    """Scores (N,) from labels that are scores (N,) / (N, 1) or distributions (N, C)."""
    backend, labels = _checks.tensor(labels, "labels")
    return _checks.scores(backend, labels, "labels", bin_values, validate)


def distribution_from_counts(counts: Tensor) -> Tensor:
    """Normalise vote counts (N, C) to score distributions (e.g. AVA's ``score2..score11``).

    Raises ``ValueError`` for negative or non-finite counts and for a row with no votes
    (naming the row).
    """
    backend, counts = _checks.tensor(counts, "counts")
    _checks.rank(backend, counts, "counts", (2,), "a 2-D array (N, C) of vote counts")
    counts = _checks.float_tensor(backend, counts, "counts")
    if backend.shape(counts)[0] == 0:
        return counts
    totals = backend.sum(counts, axis=1, keepdims=True)
    if backend.has_values(counts):  # a meta tensor has shapes only: nothing to check
        if backend.min_host(counts) < 0:
            raise ValueError("counts: expected non-negative vote counts, found a negative count")
        if backend.min_host(totals) <= 0:
            empty_row = int(backend.to_numpy(totals).reshape(-1).argmin())
            raise ValueError(f"counts: row {empty_row} has no votes, so it has no distribution")
    return counts / totals


def emd(
    pred: Tensor,
    target: Tensor,
    r: float = 2,
    *,
    form: Literal["sample", "batch"] = "sample",
    reduction: Literal["mean", "sum", "none"] = "mean",
    validate: bool = True,
) -> Tensor:
    """Earth mover's distance between score distributions (NIMA; paper 3.1).

    ``form="sample"`` (default): per sample ``(mean_k |CDF_y(k) - CDF_yhat(k)|^r)^(1/r)``,
    then reduced over the batch. ``form="batch"`` is the authors' code: one root of the
    mean over the whole batch, ``(mean_{n,k} |dCDF|^r)^(1/r)`` (``reduction`` is ignored).

    The root is given a zero gradient where the distance is exactly 0, so a perfect
    prediction yields a zero gradient, not NaN.

    Args:
        pred: (N, C) predicted probabilities (a softmax output, not logits).
        target: (N, C) target distributions.
        r: the norm's power, > 0 (NIMA uses 2).
    """
    r = _checks.positive_number(r, "r")
    if form not in ("sample", "batch"):
        raise ValueError(f"form: expected 'sample' or 'batch', got {form!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    backend, pred = _checks.tensor(pred, "pred")
    _, target = _checks.tensor(target, "target")
    pred = _checks.distribution(backend, pred, "pred", validate)
    target = _checks.distribution(backend, target, "target", validate)
    if backend.shape(pred) != backend.shape(target):
        raise ValueError(
            f"target: expected shape {backend.shape(pred)} to match pred, got {backend.shape(target)}"
        )
    target = backend.cast_like(target, pred)
    cdf_gap = backend.abs(backend.cumsum(pred, axis=1) - backend.cumsum(target, axis=1))
    powered = cdf_gap**r if r != 1 else cdf_gap
    if form == "batch":
        return _safe_root(backend, backend.mean(powered), r)
    per_sample = _safe_root(backend, backend.mean(powered, axis=1), r)
    if reduction == "none":
        return per_sample
    if backend.shape(per_sample)[0] == 0:
        return backend.sum(per_sample)
    return backend.mean(per_sample) if reduction == "mean" else backend.sum(per_sample)


def mse(pred: Tensor, target: Tensor, *, validate: bool = True) -> Tensor:
    """Mean squared error between predicted and true scores (paper 3.1, score datasets)."""
    backend, pred = _checks.tensor(pred, "pred")
    _, target = _checks.tensor(target, "target")
    pred = _checks.scalar_scores(backend, pred, "pred", validate)
    target = _checks.scalar_scores(backend, target, "target", validate)
    _checks.same_length("pred", backend.shape(pred)[0], "target", backend.shape(target)[0])
    if backend.shape(pred)[0] == 0:
        return backend.sum(pred)
    return backend.mean((pred - backend.cast_like(target, pred)) ** 2)


def _check_output_kind(output: str) -> None:
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output: expected 'logits', 'probs' or 'score', got {output!r}")


def output_scores(predictions: Tensor, output: OutputKind, bin_values: Any = None, *, validate: bool = True) -> Tensor:
    """Scores (N,) from a model's output of kind ``output``: a scalar ``"score"``, a
    softmax ``"probs"`` (paper 3.1) or ``"logits"`` (paper 3.4)."""
    _check_output_kind(output)
    backend, predictions = _checks.tensor(predictions, "predictions")
    if output == "score":
        return _checks.scalar_scores(backend, predictions, "predictions", validate)
    if output == "probs":
        return scores_from_distribution(predictions, bin_values, validate=validate)
    from elta_core.apds import predicted_scores

    return predicted_scores(predictions, bin_values, validate=validate)


def task_loss(predictions: Tensor, labels: Tensor, output: OutputKind, bin_values: Any = None, *,
              validate: bool = True, weights: Tensor | None = None) -> Tensor:
    """The default task loss of the adapters (paper 3.1): EMD between distributions
    when the labels are (N, C) distributions and the model outputs C levels, else the MSE
    between the predicted and the true scores. Computed in float32 at least. The labels
    are named ``y`` in errors, as in the adapters' ``fit``/``wrapper(x, y)``. With
    ``weights`` (N,), the mean of the per-sample losses weighted by them (a reweighting
    such as LDS; the weights are not normalised per batch)."""
    _check_output_kind(output)
    backend, predictions = _checks.tensor(predictions, "predictions")
    _, labels = _checks.tensor(labels, "labels")
    predictions = _checks.float_tensor(backend, predictions, "predictions", validate)
    label_shape = backend.shape(labels)
    distribution_labels = len(label_shape) == 2 and label_shape[1] > 1
    if distribution_labels and output != "score":
        levels = backend.shape(predictions)[-1]
        if levels != label_shape[1]:
            raise ValueError(f"y: expected distributions over the model's {levels} outputs, "
                             f"got {label_shape[1]} levels")
        probs = predictions if output == "probs" else backend.softmax(predictions, axis=1)
        if weights is None:
            return emd(probs, backend.cast_like(labels, probs), validate=validate)
        per_sample = emd(probs, backend.cast_like(labels, probs), reduction="none", validate=validate)
        return _weighted_mean(backend, per_sample, weights)
    target = label_scores(labels, bin_values, validate=validate)
    predicted = output_scores(predictions, output, bin_values, validate=validate)
    if weights is None:
        return mse(predicted, target, validate=validate)
    _checks.same_length("predictions", backend.shape(predicted)[0], "labels", backend.shape(target)[0])
    return _weighted_mean(backend, (predicted - backend.cast_like(target, predicted)) ** 2, weights)


def _weighted_mean(backend, per_sample: Tensor, weights: Tensor) -> Tensor:
    _checks.same_length("weights", get_backend(weights).shape(weights)[0], "the batch", backend.shape(per_sample)[0])
    if backend.shape(per_sample)[0] == 0:
        return backend.sum(per_sample)
    return backend.mean(per_sample * backend.cast_like(weights, per_sample))


def _safe_root(backend, x: Tensor, r: float) -> Tensor:
    """``x ** (1/r)`` with a zero gradient at exactly 0; NaN and Inf pass through."""
    if r == 1:
        return x
    zero = x == 0
    safe = backend.where(zero, backend.constant(1.0, x), x)
    return backend.where(zero, backend.constant(0.0, x), safe ** (1.0 / r))

