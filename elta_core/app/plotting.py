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


def predicted_against_true(axis, true, runs: list, title: str, colour: str = "tab:blue",
                           labels: list[str] | None = None) -> None:
    """Predicted against true scores (one point per image, every run overlaid), the low and
    high 20 % of the true scores shaded, with their L and H (mean ± sample std over the
    runs) and the middle's M and the PLCC in the title."""
    import numpy as np

    from elta_core import metrics

    true = np.asarray(true, dtype=float)
    runs = [np.asarray(r, dtype=float) for r in runs]
    results = [metrics.evaluate(predicted, true) for predicted in runs]
    low_edge, high_edge = np.quantile(true, [0.2, 0.8])
    everything = np.concatenate([true, *runs])
    span = (everything.min() - 0.2, everything.max() + 0.2)
    markers = ["o", "s", "^", "D", "v"]
    for k, predicted in enumerate(runs):
        axis.scatter(true, predicted, s=4, alpha=0.25 if len(true) > 300 else 0.6, color=colour,
                     marker=markers[k % len(markers)], label=labels[k] if labels else None)
    axis.axvspan(span[0], low_edge, color="0.85", zorder=0)
    axis.axvspan(high_edge, span[1], color="0.85", zorder=0)

    def spread(key: str) -> str:
        values = np.array([r[key] for r in results])
        return f"{values.mean():.2f}" + (f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else "")

    tail = metrics.segment_sizes(len(true))[0]
    for key, where, label in (("mae_low", (span[0] + low_edge) / 2, "low 20 %"),
                              ("mae_high", (high_edge + span[1]) / 2, "high 20 %")):
        axis.text(where, span[1] - 0.15, f"{label} ({tail} images)\n{'L' if key == 'mae_low' else 'H'} = "
                  f"{spread(key)}", ha="center", va="top", fontsize=9)
    axis.plot(span, span, color="black", linewidth=0.8)
    axis.set_xlim(*span)
    axis.set_ylim(*span)
    axis.set_xlabel("true score")
    axis.set_ylabel("predicted score")
    axis.set_title(f"{title}\nM = {spread('mae_medium')}, P = {np.mean([r['plcc'] for r in results]):.3f}", fontsize=10)
    if labels:
        axis.legend(loc="lower right", markerscale=3, fontsize=8)
