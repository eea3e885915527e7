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
