"""Evaluation metrics (paper 4.1): PLCC, SRCC, binary accuracy and segment MAE.

Metrics are summaries, not losses: they take NumPy arrays or tensors of any framework
(scores (N,) / (N, 1), or distributions (N, C) turned into scores with ``bin_values``),
compute in float64 on the host, and return Python floats.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

from elta_core import _checks

Tensor = Any

__all__ = ["MetricAccumulator", "SegmentMAE", "accuracy", "evaluate", "plcc", "segment_mae", "segments", "srcc"]


def _pair(pred: Tensor, true: Tensor, bin_values: Any = None) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for value, name in ((pred, "pred"), (true, "true")):
        backend, value = _checks.tensor(value, name)
        _checks.has_values(backend, value, name, "a metric")
        scores = _checks.scores(backend, value, name, bin_values)
        arrays.append(backend.to_numpy(scores).astype(np.float64))
    _checks.same_length("pred", arrays[0].shape[0], "true", arrays[1].shape[0])
    return arrays[0], arrays[1]


MIN_SAMPLES = 3  # evaluate's least: the three segments need a sample each


def _need(count: int, size: int, what: str) -> None:
    if size < count:
        raise ValueError(f"pred: {what} needs at least {count} samples, got {size}")


def _constant(x: np.ndarray) -> bool:
    """Constant within floating tolerance: its spread is rounding, not signal (the mean of
    a constant is not always exactly it, so the centred values are not exactly 0)."""
    return float(np.ptp(x)) <= 8 * np.finfo(np.float64).eps * max(float(np.max(np.abs(x))), 1e-300)


def _pearson(x: np.ndarray, y: np.ndarray, name: str) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    denominator = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    if denominator == 0 or _constant(x) or _constant(y):
        warnings.warn(
            f"{name}: an input is constant, so the correlation is undefined; returning NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        return float("nan")
    return float(np.clip((xc * yc).sum() / denominator, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], x.size] - 1
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def plcc(pred: Tensor, true: Tensor, *, bin_values: Any = None) -> float:
    """Pearson linear correlation between predicted and true scores (as scipy.stats.pearsonr).

    Returns NaN with a ``RuntimeWarning`` when an input is constant.
    """
    p, t = _pair(pred, true, bin_values)
    _need(2, p.size, "plcc")
    return _pearson(p, t, "plcc")


def srcc(pred: Tensor, true: Tensor, *, bin_values: Any = None) -> float:
    """Spearman rank correlation, ties averaged (as scipy.stats.spearmanr)."""
    p, t = _pair(pred, true, bin_values)
    _need(2, p.size, "srcc")
    return _pearson(_ranks(p), _ranks(t), "srcc")


def accuracy(pred: Tensor, true: Tensor, threshold: float = 5.0, *, bin_values: Any = None) -> float:
    """Binary aesthetics accuracy: the share of samples where ``pred > threshold`` agrees
    with ``true > threshold`` (AVA: 5 on 1..10)."""
    threshold = _checks.finite_number(threshold, "threshold")
    p, t = _pair(pred, true, bin_values)
    _need(1, p.size, "accuracy")
    return float(np.mean((p > threshold) == (t > threshold)))


class SegmentMAE(NamedTuple):
    """MAE of the low 20 %, medium 60 % and high 20 % of the true scores (by rank)."""

    low: float
    medium: float
    high: float


def segment_sizes(size: int) -> tuple[int, int, int]:
    """Sizes of the low, medium and high segments: 20 %, 60 %, 20 % by rank, each >= 1."""
    tail = max(1, int(round(0.2 * size)))
    return tail, size - 2 * tail, tail


def _segment_weights(true: np.ndarray) -> np.ndarray:
    """(3, N): how much of each sample counts in the low, medium and high segment, from the
    true scores alone (docs/design.md, "Segment MAE"). The segments are the bottom 20 %,
    middle 60 % and top 20 % of the ranks; a group of tied true scores that straddles a
    boundary has every member counted in each segment with the share of the group's ranks
    that fall in it, so no predicted score decides which tied samples are the tail."""
    size = true.size
    order = np.argsort(true, kind="stable")
    sorted_true = true[order]
    starts = np.r_[True, sorted_true[1:] != sorted_true[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    begin, end = first[group], np.r_[first[1:], size][group]  # each sample's group: ranks [begin, end)
    low, medium, _ = segment_sizes(size)
    weights = np.zeros((3, size))
    for k, (lo, hi) in enumerate(((0, low), (low, low + medium), (low + medium, size))):
        weights[k, order] = np.clip(np.minimum(end, hi) - np.maximum(begin, lo), 0, None) / (end - begin)
    return weights


def _by_segment(values: np.ndarray, weights: np.ndarray) -> tuple[float, float, float]:
    return tuple(float((w * values).sum() / w.sum()) for w in weights)


def segments(true: Tensor, *, bin_values: Any = None) -> np.ndarray:
    """The segment of each sample, ``"low"``, ``"medium"`` or ``"high"``: the one that
    holds most of it (see :func:`segment_mae`; a tied group split by a boundary is in
    both, and named after the larger share)."""
    backend, value = _checks.tensor(true, "true")
    t = backend.to_numpy(_checks.scores(backend, value, "true", bin_values)).astype(np.float64)
    _need(3, t.size, "segments")
    return np.array(["low", "medium", "high"])[np.argmax(_segment_weights(t), axis=0)]


def segment_mae(pred: Tensor, true: Tensor, *, bin_values: Any = None) -> SegmentMAE:
    """MAE on the low, medium and high segments of the true scores [paper 4.1; boundaries in docs/design.md].

    The bottom 20 % of the true scores' ranks are "low", the top 20 % "high" and the rest
    "medium"; a group of tied true scores split by a boundary counts in each segment with
    the share of its ranks there, so the segments are a function of the true scores alone
    (the authors' script drops the boundary samples; this does not). Needs N >= 3.
    """
    p, t = _pair(pred, true, bin_values)
    _need(3, p.size, "segment_mae")
    return SegmentMAE(*_by_segment(np.abs(p - t), _segment_weights(t)))


def evaluate(pred: Tensor, true: Tensor, threshold: float = 5.0, *, bin_values: Any = None) -> dict[str, float]:
    """All metrics as a dict: ``plcc``, ``srcc``, ``accuracy``, ``mae``, ``mae_low``,
    ``mae_medium``, ``mae_high`` (the paper's P, S, L, M, H and accuracy) and the squared
    errors ``mse``, ``mse_low``, ``mse_medium``, ``mse_high`` (the authors' code reports MSE)."""
    p, t = _pair(pred, true, bin_values)
    _need(MIN_SAMPLES, p.size, "evaluate")
    errors, weights = p - t, _segment_weights(t)
    low, medium, high = _by_segment(np.abs(errors), weights)
    squared = _by_segment(errors * errors, weights)
    return {
        "plcc": plcc(p, t),
        "srcc": srcc(p, t),
        "accuracy": accuracy(p, t, threshold),
        "mae": float(np.mean(np.abs(errors))),
        "mae_low": low,
        "mae_medium": medium,
        "mae_high": high,
        "mse": float(np.mean(errors * errors)),
        "mse_low": squared[0],
        "mse_medium": squared[1],
        "mse_high": squared[2],
    }


class MetricAccumulator:
    """The metrics of :func:`evaluate`, accumulated batch by batch: ``update`` per batch,
    ``compute`` at the end equals :func:`evaluate` on every sample seen, whatever the
    batching (the mean of per-batch PLCCs does not: on a score-sorted loader it can be far
    off). SRCC and the segments rank the whole set, so the scores themselves are kept
    (two float64 numbers a sample). Mergeable: ``merge`` adds another accumulator's
    samples, and ``sync(gather)`` merges every process's (``gather`` returns the list of
    all processes' ``state_dict()``, e.g. through ``torch.distributed.all_gather_object``,
    which :func:`elta_core.adapters.torch.distributed.gather_objects` wraps)."""

    def __init__(self, threshold: float = 5.0, *, bin_values: Any = None):
        self.threshold = _checks.finite_number(threshold, "threshold")
        self.bin_values = None if bin_values is None else [float(v) for v in np.asarray(bin_values).reshape(-1)]
        self.reset()

    def reset(self) -> None:
        self._pred: list[np.ndarray] = []
        self._true: list[np.ndarray] = []

    def __len__(self) -> int:
        return int(sum(len(p) for p in self._pred))

    def update(self, pred: Tensor, true: Tensor) -> None:
        """Add a batch: predicted and true scores (N,) or distributions (N, C)."""
        p, t = _pair(pred, true, self.bin_values)
        self._pred.append(p)
        self._true.append(t)

    def compute(self) -> dict[str, float]:
        if not len(self):
            raise ValueError("pred: no samples were accumulated; call update() with batches first")
        return evaluate(np.concatenate(self._pred), np.concatenate(self._true), self.threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"pred": np.concatenate(self._pred) if self._pred else np.zeros(0),
                "true": np.concatenate(self._true) if self._true else np.zeros(0),
                "threshold": self.threshold, "bin_values": self.bin_values}

    def merge(self, other: "MetricAccumulator | dict[str, Any]") -> "MetricAccumulator":
        state = other.state_dict() if isinstance(other, MetricAccumulator) else other
        if state["threshold"] != self.threshold or state["bin_values"] != self.bin_values:
            raise ValueError("other: expected an accumulator with the same threshold and bin_values")
        if len(state["pred"]):
            self._pred.append(np.asarray(state["pred"], dtype=np.float64))
            self._true.append(np.asarray(state["true"], dtype=np.float64))
        return self

    def sync(self, gather: "Callable[[dict[str, Any]], list[dict[str, Any]]]") -> "MetricAccumulator":
        """An accumulator holding every process's samples, in process order."""
        merged = MetricAccumulator(self.threshold, bin_values=self.bin_values)
        for state in gather(self.state_dict()):
            merged.merge(state)
        return merged
