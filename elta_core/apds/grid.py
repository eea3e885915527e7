"""APDS's grid search over (beta, threshold) on a labelled calibration set [Eq. 9, with
the mean instead of the paper's sum]: the setting whose selected pseudo-labels are most
accurate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from elta_core import _checks
from elta_core.apds.sharpening import (CONFIDENCE_QUANTILES, DEFAULT_BETAS, DEFAULT_MIN_SELECTED,
                                       DEFAULT_PSEUDO_LABEL, DEFAULT_THRESHOLDS, PAPER_THRESHOLDS, PseudoLabel, Tensor,
                                       Thresholds, _check_pseudo_label, _checked_mean_score, _kernel,
                                       _max_sharpened_prob, _prediction, _Prediction, _pseudo_labels,
                                       _validated_logits)


@dataclass(frozen=True)
class GridCell:
    """One (beta, threshold) cell: MAE of the selected pseudo-labels (None if none) and how many."""

    beta: float
    threshold: float
    mae: float | None
    num_selected: int
    eligible: bool


@dataclass(frozen=True)
class GridSearchResult:
    """Best cell of :func:`grid_search` and the whole ``table`` (one :class:`GridCell` per cell)."""

    beta: float
    threshold: float
    mae: float
    num_selected: int
    min_selected: int
    table: list[GridCell] = field(repr=False)
    thresholds_from: str = "given"

    @property
    def empty_cells(self) -> int:
        """Cells that selected no sample at all."""
        return sum(cell.num_selected == 0 for cell in self.table)

    def describe(self) -> str:
        """One line: which thresholds were searched, and how many cells were empty or
        below ``min_selected``."""
        short = sum(not cell.eligible for cell in self.table)
        return (f"thresholds: {self.thresholds_from}; {len(self.table)} cells, {self.empty_cells} empty, "
                f"{short} below min_selected = {self.min_selected}")

    def to_markdown(self) -> str:
        """The table as Markdown; the chosen cell is marked with ``*``; the last line is
        :meth:`describe`."""
        lines = ["| beta | threshold | MAE | selected |", "|---:|---:|---:|---:|"]
        for cell in self.table:
            mark = " *" if (cell.beta, cell.threshold) == (self.beta, self.threshold) else ""
            mae = "-" if cell.mae is None else f"{cell.mae:.4f}"
            lines.append(f"| {cell.beta:g} | {cell.threshold:g} | {mae} | {cell.num_selected}{mark} |")
        return "\n".join(lines + ["", self.describe()])

    def as_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "threshold": self.threshold,
            "mae": self.mae,
            "num_selected": self.num_selected,
            "min_selected": self.min_selected,
            "thresholds_from": self.thresholds_from,
            "empty_cells": self.empty_cells,
            "table": [cell.__dict__.copy() for cell in self.table],
        }


def _min_selected_count(min_selected: int | float, total: int) -> int:
    if isinstance(min_selected, bool):
        raise ValueError(f"min_selected: expected a count or a fraction in (0, 1), got {min_selected!r}")
    if isinstance(min_selected, float) and 0 < min_selected < 1:
        return max(1, math.ceil(min_selected * total))
    if isinstance(min_selected, (int, float)) and min_selected == int(min_selected) and min_selected >= 1:
        return int(min_selected)
    raise ValueError(f"min_selected: expected a count >= 1 or a fraction in (0, 1), got {min_selected!r}")


def _grid_stats(backend, prediction: _Prediction, true_scores: Tensor, betas: list[float],
                sorted_thresholds: list[float], pseudo_label: PseudoLabel, strict: bool) -> dict:
    """(count, summed |error|) per (beta, threshold): one pass per beta, thresholds bucketed."""
    edges = backend.constant(sorted_thresholds, prediction.scores)
    buckets = len(sorted_thresholds) + 1
    stats: dict[tuple[float, float], tuple[int, float]] = {}
    for beta in betas:
        confidence = _max_sharpened_prob(backend, prediction, beta)
        if pseudo_label == "prediction":
            pseudo_scores = prediction.scores
        else:
            pseudo_scores = backend.matmul(
                _pseudo_labels(backend, prediction, beta, pseudo_label), prediction.bin_values
            )
        errors = backend.abs(pseudo_scores - true_scores)
        # Bucket b holds the samples that pass exactly the b lowest thresholds.
        bucket = backend.searchsorted(edges, confidence, right=not strict)
        counts = backend.to_numpy(backend.bincount(bucket, errors * 0 + 1, buckets))
        sums = backend.to_numpy(backend.bincount(bucket, errors, buckets))
        # Passing threshold k means landing in a bucket > k: reverse cumulative sums.
        passing_counts = counts[::-1].cumsum()[::-1]
        passing_sums = sums[::-1].cumsum()[::-1]
        for k, t in enumerate(sorted_thresholds):
            stats[(beta, t)] = (int(round(float(passing_counts[k + 1]))), float(passing_sums[k + 1]))
    return stats


def _accumulate(backend, logits: Tensor, true_scores: Tensor, values: Tensor, betas: list[float],
                thresholds: list[float], mean_score: float | None, score_scale: float, pseudo_label: PseudoLabel,
                strict: bool) -> dict[tuple[float, float], tuple[int, float]]:
    """(count, summed |error|) per (beta, threshold), from the implementation that
    :mod:`elta_core.kernels.dispatch` picks."""
    from elta_core.kernels import dispatch

    sorted_thresholds = sorted(set(thresholds))
    unique_betas = list(dict.fromkeys(betas))
    sharpened = pseudo_label == "sharpened"

    def reference():
        prediction = _prediction(backend, logits, values, mean_score, score_scale)
        return _grid_stats(backend, prediction, true_scores, unique_betas, sorted_thresholds, pseudo_label, strict)

    def from_arrays(arrays) -> dict:
        counts, sums = arrays
        return {(beta, t): (int(counts[b, k]), float(sums[b, k]))
                for b, beta in enumerate(unique_betas) for k, t in enumerate(sorted_thresholds)}

    def kernel(grid_accumulate) -> dict:
        return from_arrays(grid_accumulate(logits, true_scores, values, unique_betas, sorted_thresholds, mean_score,
                                           score_scale, strict, sharpened))

    return dispatch.run(_kernel("apds_grid", backend, logits), kernel, reference)


def _best_cell(table: list[GridCell], floor: int, size: int, float64: bool, source: str = "given") -> GridCell:
    """The eligible cell with the lowest MAE; ties to more selected, then grid order."""
    eligible = [cell for cell in table if cell.eligible]
    if not eligible:
        best_coverage = max(cell.num_selected for cell in table)
        hint = (" thresholds='auto' (the default) falls back to the calibration set's own confidence quantiles."
                if source == "the paper's grid" else "")
        raise ValueError(
            f"min_selected: no (beta, threshold) cell selects at least {floor} of {size} samples (thresholds: "
            f"{source}; {sum(c.num_selected == 0 for c in table)} of {len(table)} cells empty); the largest "
            f"selection is {best_coverage}. Lower the thresholds, raise the betas or lower min_selected.{hint}"
        )
    # Sums over the same samples, grouped differently per beta, differ by rounding only:
    # MAEs within a relative 1e-9 of the lowest count as tied (1e-5 below float64).
    tie = 1e-9 if float64 else 1e-5
    lowest = min(cell.mae for cell in eligible)
    tied = [cell for cell in eligible if cell.mae <= lowest + tie * abs(lowest) + 1e-12]
    return max(tied, key=lambda cell: cell.num_selected)  # max keeps the first of equals


def _calibration_scores(backend, logits: Tensor, labels: Tensor, bin_values: Any, validate: bool) -> Tensor:
    """The true scores (N,) of the calibration labels, on the logits' scale and device."""
    label_backend, labels = _checks.tensor(labels, "labels")
    size, levels = backend.shape(logits)
    label_shape = label_backend.shape(labels)
    if len(label_shape) == 2 and label_shape[1] > 1 and label_shape[1] != levels:
        raise ValueError(f"labels: expected distributions over the logits' {levels} levels, got {label_shape[1]} "
                         "levels (scores on two different scales cannot be compared)")
    true_scores = _checks.scores(backend, labels, "labels", bin_values, validate)
    _checks.same_length("logits", size, "labels", backend.shape(true_scores)[0])
    if validate and size and not (len(label_shape) == 2 and label_shape[1] > 1):
        # score labels on the levels' rating scale, as a training step requires
        values = tuple(float(v) for v in backend.to_numpy(_checks.bin_values_for(backend, bin_values, levels, logits)))
        _checks.check_scale(backend, true_scores, values, "labels")
    return backend.cast_like(true_scores, logits)


def grid_search(
    logits: Tensor,
    labels: Tensor,
    betas: Sequence[float] = DEFAULT_BETAS,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    bin_values: Any = None,
    min_selected: int | float = DEFAULT_MIN_SELECTED,
    pseudo_label: PseudoLabel = DEFAULT_PSEUDO_LABEL,
    *,
    mean_score: float | None = None,
    strict: bool = False,
    score_scale: float = 1.0,
    validate: bool = True,
) -> GridSearchResult:
    """Pick (beta, threshold) on a labelled calibration set [Eq. 9, as a mean; docs/design.md].

    For each cell, the samples with sharpened max probability ``>= t`` are selected and
    the MEAN absolute error between their pseudo-label score and true score is taken
    (Eq. 9's sum would be minimised by selecting nothing). Cells with fewer than
    ``min_selected`` samples are not eligible. The best cell has the lowest MAE; ties
    (within a relative 1e-9 for float64 logits, 1e-5 for lower precisions, where the
    same samples summed in another order differ by more) go to more selected samples,
    then to the earlier cell in grid order.

    All thresholds of one beta come from one pass: each max probability is bucketed
    among the sorted thresholds and the errors are summed per bucket.

    Args:
        logits: (N, C) calibration logits.
        labels: (N,) / (N, 1) true scores or (N, C) true distributions.
        thresholds: numbers in (0, 1]; ``"paper"`` (0.70 to 0.90, the paper's grid, tuned
            for a pretrained Swin V2 on AVA); ``"quantiles"`` (the 0.5 to 0.9 quantiles of
            this calibration set's sharpened max probability, at the median beta); or
            ``"auto"`` (default): the paper's grid, and the quantiles when no cell of it
            selects ``min_selected`` samples. ``result.thresholds_from`` says which.
        min_selected: a count (default 11, "more than 10" in the authors' code) or a
            fraction of N in (0, 1).
        pseudo_label: which pseudo-label score is compared, see :func:`select`.

    Raises:
        ValueError: if no cell selects ``min_selected`` samples; the message gives the
        largest selection found.
    """
    beta_values = _checks.non_negative_numbers(betas, "betas")
    mode = _threshold_mode(thresholds)
    _check_pseudo_label(pseudo_label)
    backend, logits, values, score_scale = _validated_logits(logits, bin_values, score_scale, validate)
    _checks.has_values(backend, logits, "logits", "the grid search")
    mean_score = _checked_mean_score(mean_score)
    true_scores = _calibration_scores(backend, logits, labels, bin_values, validate)
    _checks.has_values(backend, true_scores, "labels", "the grid search")
    size = backend.shape(logits)[0]
    floor = _min_selected_count(min_selected, size)

    def table_for(threshold_values: list[float]) -> list[GridCell]:
        stats = _accumulate(backend, logits, true_scores, values, beta_values, threshold_values, mean_score,
                            score_scale, pseudo_label, strict)
        return [GridCell(beta, t, stats[(beta, t)][1] / stats[(beta, t)][0] if stats[(beta, t)][0] else None,
                         stats[(beta, t)][0], stats[(beta, t)][0] >= floor)
                for beta in beta_values for t in threshold_values]

    if mode == "given":
        table, source = table_for(_checks.probability_thresholds(thresholds, "thresholds")), "given"
    else:
        table, source = table_for(list(PAPER_THRESHOLDS)), "the paper's grid"
        if mode == "quantiles" or (mode == "auto" and not any(cell.eligible for cell in table)):
            prediction = _prediction(backend, logits, values, mean_score, score_scale)
            quantiles = _confidence_quantiles(backend, prediction, beta_values, floor)
            reason = "" if mode == "quantiles" else "the paper's grid selected fewer than min_selected; "
            table = table_for(quantiles)
            source = (f"{reason}quantiles {', '.join(f'{q:g}' for q in CONFIDENCE_QUANTILES)} of the calibration "
                      "set's sharpened confidence")
    best = _best_cell(table, floor, size, "float64" in str(getattr(logits, "dtype", "")), source)
    return GridSearchResult(best.beta, best.threshold, best.mae, best.num_selected, floor, table, source)


def _threshold_mode(thresholds: Thresholds) -> str:
    if isinstance(thresholds, str):
        if thresholds not in ("auto", "paper", "quantiles"):
            raise ValueError(f"thresholds: expected 'auto', 'paper', 'quantiles' or numbers in (0, 1], "
                             f"got {thresholds!r}")
        return thresholds
    return "given"


def _confidence_quantiles(backend, prediction: _Prediction, betas: list[float], floor: int) -> list[float]:
    """Thresholds at :data:`CONFIDENCE_QUANTILES` of the sharpened max probability at the
    median beta, and at the quantile that lets ``floor`` samples through (so that a small
    calibration set still has an eligible cell), rounded down to 4 decimals."""
    beta = sorted(betas)[len(betas) // 2]
    confidence = np.asarray(backend.to_numpy(_max_sharpened_prob(backend, prediction, beta)), dtype=np.float64)
    levels = list(CONFIDENCE_QUANTILES)
    if 0 < floor <= len(confidence):
        levels.append(1.0 - floor / len(confidence))
    values = np.quantile(confidence, levels, method="lower")
    return sorted({min(1.0, max(1e-4, math.floor(float(v) * 1e4) / 1e4)) for v in values})
