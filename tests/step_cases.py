"""Cases of the training step that every adapter must handle the same way, as NumPy
arrays (each adapter's tests convert them): labels refused with the same named error,
and labels accepted. Imported by tests/test_torch_adapter.py and the Keras tests."""

from __future__ import annotations

import numpy as np

LEVELS = np.arange(1, 11.0)


def distributions(rows: int, levels: int = 10, seed: int = 0) -> np.ndarray:
    counts = np.random.default_rng(seed).integers(0, 20, (rows, levels)) + 0.1
    return (counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)


def _nan(d: np.ndarray) -> np.ndarray:
    d = d.copy()
    d[1, 3] = np.nan
    return d


def _negative(d: np.ndarray) -> np.ndarray:
    d = d.copy()
    d[:, 0], d[:, 1] = -0.1, d[:, 0] + d[:, 1] + 0.1  # rows still sum to 1
    return d


BAD_LABELS = [  # (id, make labels from (B, 10) distributions, the message)
    ("raw-counts", lambda d: d * 50, "raw vote counts"),
    ("nan", _nan, "y: expected finite labels"),
    ("off-scale-scores", lambda d: (d @ LEVELS) * 10, "y: expected scores on the rating scale"),
    ("nine-levels", lambda d: d[:, :9] / d[:, :9].sum(1, keepdims=True), "y: expected distributions over the model's 10"),
    ("negative-mass", _negative, "non-negative"),
]
GOOD_LABELS = [  # (id, make labels from (B, 10) distributions)
    ("distributions", lambda d: d),
    ("scores", lambda d: (d @ LEVELS).astype(np.float32)),
    ("scores-column", lambda d: (d @ LEVELS).astype(np.float32)[:, None]),
]
