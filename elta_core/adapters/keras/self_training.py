"""APDS self-training for Keras models [Eqs. 7-10; SPEC 4.4-4.6]: predict a labelled
calibration set and an unlabelled pool, pick (beta, t) by the grid search, keep the
confident pool samples as pseudo-labels (at most as many as the labelled set, most
confident first) and build the round-2 data set L_s + L_u."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import keras
import numpy as np

from elta_core import apds

_TINY = 1e-12


def _logits(model: keras.Model, x: Any, output: str, batch_size: int, verbose: int | str) -> np.ndarray:
    """(N, C) logits of ``model`` on ``x`` (softmax outputs are turned back with a log)."""
    predictions = np.asarray(model.predict(x, batch_size=batch_size, verbose=verbose), dtype=np.float64)
    if predictions.ndim != 2 or predictions.shape[1] < 2:
        raise ValueError(
            f"model: APDS needs a distribution head (N, C >= 2), got predictions of shape {predictions.shape}; "
            "give the model a C-level softmax head"
        )
    kind = output
    if kind == "auto":
        kind = getattr(model, "output_kind", lambda p: "logits")(predictions)
    return np.log(np.maximum(predictions, _TINY)) if kind == "probs" else predictions


@dataclass
class PseudoLabels:
    """The APDS round: the grid search, the kept pool indices and their label distributions."""

    grid: apds.GridSearchResult
    indices: np.ndarray  # (K,) rows of the unlabelled pool
    labels: np.ndarray  # (K, C) pseudo-label distributions
    num_selected: int  # passing the threshold, before the cap

    def round2(self, x_labelled: np.ndarray, y_labelled: np.ndarray, x_unlabelled: np.ndarray,
               batch_size: int = 32, shuffle: bool = True, seed: int = 0) -> keras.utils.PyDataset:
        """The round-2 training set L_s + L_u as a ``keras.utils.PyDataset`` (any backend)."""
        y_labelled = np.asarray(y_labelled, dtype=np.float32)
        if y_labelled.ndim != 2 or y_labelled.shape[1] != self.labels.shape[1]:
            raise ValueError(f"y_labelled: expected (N, {self.labels.shape[1]}) distributions to join the "
                             f"pseudo-labels, got shape {y_labelled.shape}")
        x = np.concatenate([np.asarray(x_labelled), np.asarray(x_unlabelled)[self.indices]], axis=0)
        y = np.concatenate([y_labelled, self.labels.astype(np.float32)], axis=0)
        return _ArrayDataset(x, y, batch_size, shuffle, seed)


class _ArrayDataset(keras.utils.PyDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(x))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)


def pseudo_label(
    model: keras.Model,
    calibration: tuple[Any, Any],
    unlabelled: Any,
    *,
    betas: Sequence[float] = apds.DEFAULT_BETAS,
    thresholds: Sequence[float] = apds.DEFAULT_THRESHOLDS,
    bin_values: Any = None,
    min_selected: int | float = 11,
    pseudo_label: apds.PseudoLabel = "prediction",
    score_scale: float | None = None,
    max_selected: int | None = None,
    output: str = "auto",
    batch_size: int = 64,
    verbose: int | str = "auto",
) -> PseudoLabels:
    """One APDS round with a trained model (an :class:`ELTAModel` or any Keras model with
    a C-level head). ``calibration`` is ``(x, y)``; ``unlabelled`` is ``x``. Predictions
    show Keras's progress bar (``verbose``). ``max_selected`` caps the pseudo-labels
    (default: no cap; the authors cap at the labelled set's size)."""
    if not isinstance(calibration, (tuple, list)) or len(calibration) != 2:
        raise ValueError("calibration: expected a pair (x, y) of a labelled calibration set")
    bin_values = bin_values if bin_values is not None else getattr(model, "bin_values", None)
    score_scale = score_scale if score_scale is not None else getattr(model, "score_scale", 1.0)
    x_calibration, y_calibration = calibration
    calibration_logits = _logits(model, x_calibration, output, batch_size, verbose)
    grid = apds.grid_search(calibration_logits, np.asarray(y_calibration, dtype=np.float64), betas, thresholds,
                            bin_values, min_selected, pseudo_label, score_scale=score_scale)
    pool = _logits(model, unlabelled, output, batch_size, verbose)
    if pool.shape[1] != calibration_logits.shape[1]:
        raise ValueError(f"unlabelled: the model gave {pool.shape[1]} levels, the calibration set "
                         f"{calibration_logits.shape[1]}")
    chosen = apds.select(pool, grid.beta, grid.threshold, bin_values, pseudo_label=pseudo_label,
                         score_scale=score_scale)
    kept = chosen
    if max_selected is not None:  # [A.2] most confident first
        kept = apds.keep_most_confident(pool, chosen, grid.beta, max_selected, bin_values, score_scale=score_scale)
    return PseudoLabels(grid, np.asarray(kept.indices), np.asarray(kept.labels), len(chosen.indices))
