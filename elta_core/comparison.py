"""Paired comparisons of training runs: is a method's difference to the baseline larger
than the seed-to-seed noise?

A method and the baseline are trained on the same data, splits and seeds, so their
results pair up by seed. :func:`paired_difference` gives the mean of the per-seed
differences and its Student-t confidence interval (n - 1 degrees of freedom), which
excludes zero when the difference is significant at that level. NumPy only: the t
quantile comes from the closed-form t distribution for integer degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["PairedDifference", "paired_difference", "t_quantile"]


def _t_central_probability(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with integer ``dof`` (Abramowitz and Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2, sin_theta = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2 == 1:
        if dof == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (dof - 3) // 2 + 1):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + sin_theta * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, (dof - 2) // 2 + 1):
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return sin_theta * total


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom
    (``probability`` in (0.5, 1)), by bisection on the closed-form distribution."""
    if not 0.5 < probability < 1:
        raise ValueError(f"probability: expected a value in (0.5, 1), got {probability}")
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"dof: expected an int >= 1, got {dof!r}")
    central = 2 * probability - 1
    low, high = 0.0, 1.0
    while _t_central_probability(high, dof) < central:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central_probability(middle, dof) < central else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedDifference:
    """``method - baseline`` over paired runs: the mean difference and its confidence
    interval [``low``, ``high``] at ``confidence``, from ``n`` pairs."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval excludes 0: the difference is significant at this level."""
        return self.low > 0 or self.high < 0

    def describe(self, digits: int = 3) -> str:
        mark = " *" if self.excludes_zero else ""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{mark}"


def paired_difference(method: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """The mean of ``method[k] - baseline[k]`` over paired runs (same seed and split) and
    its two-sided Student-t interval at ``confidence``: mean +- t(n-1) * sd / sqrt(n)."""
    a, b = np.asarray(method, dtype=float), np.asarray(baseline, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"method, baseline: expected two 1-D sequences of equal length (paired runs), got shapes "
                         f"{a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"method: a confidence interval needs at least 2 paired runs, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("method, baseline: expected finite results; a NaN result has no difference")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence}")
    differences = a - b
    mean = float(differences.mean())
    half = t_quantile((1 + confidence) / 2, len(a) - 1) * float(differences.std(ddof=1)) / math.sqrt(len(a))
    return PairedDifference(mean, mean - half, mean + half, len(a), confidence)


# How ``elta compare --tune`` scores a trial on the validation split: the criterion's name ->
# (its value from a run's metrics, whether larger is better, what it is).
SELECTION_CRITERIA: dict[str, tuple[Callable[[Mapping[str, float]], float], bool, str]] = {
    "mae": (lambda m: m["mae"], False, "validation MAE"),
    "tails": (lambda m: (m["mae_low"] + m["mae_high"]) / 2, False,
              "the mean of the validation L and H (the MAE of the 20 % tails)"),
    "mse": (lambda m: m["mse"], False, "validation MSE"),
    "plcc": (lambda m: m["plcc"], True, "validation PLCC"),
    "srcc": (lambda m: m["srcc"], True, "validation SRCC"),
}


def selection_value(metrics: Mapping[str, float], criterion: str) -> float:
    """The ``criterion`` (:data:`SELECTION_CRITERIA`) of a run's metrics; NaN where a
    metric it reads is missing or undefined (a run that diverged)."""
    if criterion not in SELECTION_CRITERIA:
        raise ValueError(f"criterion: expected one of {', '.join(SELECTION_CRITERIA)}, got {criterion!r}")
    try:
        value = float(SELECTION_CRITERIA[criterion][0](metrics))
    except (KeyError, TypeError):
        return math.nan
    return value if math.isfinite(value) else math.nan
