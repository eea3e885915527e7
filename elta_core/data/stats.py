"""The long-tail summary of a label file (the paper's Figure 1 bins)."""

from __future__ import annotations

import numpy as np

from elta_core.data.labels import LabelTable

# [0,2) [2,3) ... [7,8) [8,10]: the last bin is closed.
FIGURE1_EDGES = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0)
FIGURE1_BINS = ["[0,2)", "[2,3)", "[3,4)", "[4,5)", "[5,6)", "[6,7)", "[7,8)", "[8,10]"]


def figure1_counts(scores_1_to_10: np.ndarray) -> list[int]:
    """Counts per Figure 1 bin; every score in [0, 10] lands in exactly one bin."""
    scores = np.asarray(scores_1_to_10, dtype=float)
    index = np.searchsorted(np.asarray(FIGURE1_EDGES[1:-1]), scores, side="right")
    return np.bincount(index, minlength=len(FIGURE1_BINS)).astype(int).tolist()


def long_tail_summary(table: LabelTable) -> dict:
    """Counts in the Figure 1 bins (scores on 1..10), the middle 60 % interval and more.

    ``middle_60`` is the interval between the 20th and 80th percentile of the (1..10)
    scores and ``middle_60.range_share`` its width over the 9 points of the scale: how
    little of the scale holds the majority.
    """
    scores = table.scores_1_to_10()
    low, high = (float(q) for q in np.quantile(scores, [0.2, 0.8])) if len(scores) else (float("nan"),) * 2
    counts = figure1_counts(scores)
    total = int(len(scores))
    return {
        "source": table.source,
        "total": total,
        "scale": list(table.scale),
        "rescaled": table.scale != (1.0, 10.0),
        "bins": FIGURE1_BINS,
        "counts": counts,
        "shares": [c / total if total else 0.0 for c in counts],
        "mean": float(scores.mean()) if total else None,
        "std": float(scores.std()) if total else None,
        "middle_60": {"low": low, "high": high, "range_share": (high - low) / 9.0},
        "share_4_to_7": float(np.mean((scores >= 4) & (scores < 7))) if total else None,
    }
