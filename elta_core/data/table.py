"""The one plain table every label file is read into (:mod:`elta_core.data.labels`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np


@dataclass
class LabelTable:
    """Labels of one dataset.

    Attributes:
        images: image paths (joined with the image root when one was given).
        scores: (N,) mean scores on the dataset's scale ``scale``.
        distributions: (N, C) score distributions, or ``None`` for score-only datasets.
        bin_values: (C,) rating value of each level (for distributions; else a C-level
            grid over ``scale`` that a distribution head can use).
        scale: (lowest, highest) possible score.
        split: per-image split name ("train", "test", ...) or ``None``.
        theme: per-image theme (TAD66K) or ``None``.
        source: the file(s) read.
    """

    images: list[str]
    scores: np.ndarray
    distributions: np.ndarray | None
    bin_values: np.ndarray
    scale: tuple[float, float]
    split: list[str] | None = None
    theme: list[str] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> np.ndarray:
        """Distributions where known, else scores."""
        return self.distributions if self.distributions is not None else self.scores

    def scores_1_to_10(self) -> np.ndarray:
        """Scores mapped linearly from ``scale`` onto 1..10 (the paper's Figure 1 axis)."""
        low, high = self.scale
        return 1.0 + (self.scores - low) * 9.0 / (high - low)

    def subset(self, rows: Sequence[int] | np.ndarray) -> "LabelTable":
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)

        def pick(values):
            return None if values is None else [values[k] for k in rows]

        return replace(
            self,
            images=[self.images[k] for k in rows],
            scores=self.scores[rows],
            distributions=None if self.distributions is None else self.distributions[rows],
            split=pick(self.split),
            theme=pick(self.theme),
        )

    def where_split(self, name: str) -> "LabelTable":
        if self.split is None:
            raise ValueError(f"split: {self.source} has no split column")
        return self.subset(np.array([s == name for s in self.split], dtype=bool))
