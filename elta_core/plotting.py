"""Saving matplotlib figures as PNG without a display, and never half-written."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` through a temporary file, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix or '.png'}")
    try:
        fig.savefig(temporary, dpi=dpi)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
        pyplot().close(fig)
    return path
