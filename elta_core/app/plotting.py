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


def paired_differences(differences: dict[str, dict[str, dict | None]], metrics: list[tuple[str, str, str]],
                       reference: str, title: str):
    """One panel per metric: each method's mean paired difference to ``reference`` (a
    point) with its 95 % interval (a bar), the zero line marked, green where the interval
    excludes 0 on the better side, red on the worse, grey where it does not exclude 0
    (and the point alone where there is no interval: fewer than 3 seeds). Each panel has
    its own scale; a method far outside the others' range is drawn at the panel's edge
    with its value written, so that one outlier does not flatten the rest. ``differences``
    is :func:`elta_core.app.compare.summarise`'s (method -> metric -> interval or None);
    returns the figure."""
    import numpy as np

    methods = list(differences)
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = 4 if len(metrics) > 4 else len(metrics)
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 0.45 * len(methods) * rows + 1.6 * rows),
                             squeeze=False)
    for axis, (key, short, arrow) in zip(axes.flat, metrics):
        cells = [differences[m].get(key) for m in methods]
        ends = np.array([abs(v) for c in cells if c for v in (c["low"], c["high"], c["mean"])
                         if np.isfinite(v)] or [1.0])
        ordered = np.sort(ends)
        reach = ordered[-1] if len(ordered) < 4 or ordered[-1] <= 3 * ordered[-4] else 3 * ordered[-4]
        reach = float(reach) * 1.15 or 1.0
        for y, cell in enumerate(cells):
            if not cell:
                axis.annotate("undefined", (0, y), ha="center", va="center", fontsize=7, color="grey")
                continue
            better = (cell["mean"] > 0) == (arrow == "↑")
            interval = cell["n"] >= 3
            significant = interval and (cell["low"] > 0 or cell["high"] < 0)
            colour = ("tab:green" if better else "tab:red") if significant else "grey"
            clip = lambda v: float(np.clip(v, -reach, reach))  # noqa: E731
            if interval:
                axis.plot([clip(cell["low"]), clip(cell["high"])], [y, y], color=colour, linewidth=2.2)
            axis.plot([clip(cell["mean"])], [y], marker="o", color=colour, markersize=5)
            if abs(cell["mean"]) > reach or (interval and max(abs(cell["low"]), abs(cell["high"])) > reach):
                axis.annotate(f"{cell['mean']:+.3g}", (clip(cell["mean"]), y), xytext=(0, 5),
                              textcoords="offset points", ha="center", fontsize=7, color=colour)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_xlim(-reach, reach)
        axis.set_yticks(range(len(methods)), methods if axis in axes[:, 0] else [""] * len(methods), fontsize=8)
        axis.set_ylim(len(methods) - 0.5, -0.5)
        axis.set_title(f"Δ{short} ({'higher' if arrow == '↑' else 'lower'} is better)", fontsize=9)
        axis.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))  # matplotlib's default crowds the labels
        axis.tick_params(axis="x", labelsize=7)
        axis.grid(axis="x", alpha=0.3)
    for axis in list(axes.flat)[len(metrics):]:
        axis.axis("off")
    fig.suptitle(title + f"\neach method minus {reference}, paired by seed: mean and 95 % interval; green / red: "
                 "the interval excludes 0 on the better / worse side", fontsize=9)
    fig.tight_layout()
    return fig
