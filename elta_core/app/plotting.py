"""Saving matplotlib figures as PNG without a display, and never half-written."""

from __future__ import annotations

from pathlib import Path

from elta_core.io import atomic_write
from elta_core.optional import require


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically as PNG, then close it."""
    try:
        return atomic_write(path, lambda stream: fig.savefig(stream, format="png", dpi=dpi))
    finally:
        pyplot().close(fig)


def histogram(axis, bins: list[str], counts: list[int], title: str, xlabel: str = "mean score (1..10)") -> None:
    """Counts per score bin on a log scale, each bar labelled with its count, so that the
    rare tail bins (a handful of images beside thousands) stay visible and readable."""
    positions = list(range(len(bins)))
    filled = [(x, c) for x, c in zip(positions, counts) if c > 0]  # log scale: an empty bin has no bar
    axis.bar([x for x, _ in filled], [c for _, c in filled], color="#4c72b0")
    axis.set_yscale("log")
    axis.set_ylim(0.5, max([c for _, c in filled] or [1]) * 4)
    for x, count in zip(positions, counts):
        axis.annotate(f"{count:,}", (x, max(count, 0.6)), xytext=(0, 3), textcoords="offset points",
                      ha="center", va="bottom", fontsize=8)
    axis.set_xticks(positions, bins)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("images (log scale)")
    axis.set_title(title)
