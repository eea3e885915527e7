"""APDS self-training for Keras models [Eqs. 7-10]: predict a labelled calibration set
and an unlabelled pool, run the core's pseudo-label round (:mod:`elta_core.pseudo_labels`)
and build the round-2 data set for ``L = L_s + L_u`` in either meaning of Eq. 10."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import keras
import numpy as np

from elta_core import apds
from elta_core.pseudo_labels import DEFAULT_ROUND2, Round2, check_round2, pseudo_label_round

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
               batch_size: int = 32, shuffle: bool = True, seed: int = 0,
               mode: Round2 = DEFAULT_ROUND2) -> keras.utils.PyDataset:
        """The round-2 training set as a ``keras.utils.PyDataset`` (any backend).

        ``mode="concat"`` (default): the pseudo-labelled rows join the labelled set, so
        ``fit`` gives them TFA and FLSA. ``mode="separate"``: each batch is
        ``((x, x_pseudo), (y, y_pseudo))`` and :class:`ELTAModel` adds the task loss on the
        pseudo-labelled rows (``L_u``) to ``L_s``, without TFA or FLSA on them."""
        check_round2(mode)
        y_labelled = np.asarray(y_labelled, dtype=np.float32)
        if y_labelled.ndim != 2 or y_labelled.shape[1] != self.labels.shape[1]:
            raise ValueError(f"y_labelled: expected (N, {self.labels.shape[1]}) distributions to join the "
                             f"pseudo-labels, got shape {y_labelled.shape}")
        x_pseudo = np.asarray(x_unlabelled)[self.indices]
        y_pseudo = self.labels.astype(np.float32)
        if mode == "concat":
            x = np.concatenate([np.asarray(x_labelled), x_pseudo], axis=0)
            return _ArrayDataset(x, np.concatenate([y_labelled, y_pseudo], axis=0), batch_size, shuffle, seed)
        if not len(x_pseudo):
            raise ValueError("mode: 'separate' needs pseudo-labels, and none were kept")
        return _PairedDataset(_ArrayDataset(np.asarray(x_labelled), y_labelled, batch_size, shuffle, seed),
                              _ArrayDataset(x_pseudo, y_pseudo, batch_size, shuffle, seed + 1))


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


class _PairedDataset(keras.utils.PyDataset):
    """Labelled batches, each paired with a pseudo-labelled batch (cycled)."""

    def __init__(self, labelled: _ArrayDataset, pseudo: _ArrayDataset):
        super().__init__()
        self.labelled, self.pseudo = labelled, pseudo

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int):
        x, y = self.labelled[index]
        x_pseudo, y_pseudo = self.pseudo[index % len(self.pseudo)]
        return (x, x_pseudo), (y, y_pseudo)

    def on_epoch_end(self) -> None:
        self.labelled.on_epoch_end()
        self.pseudo.on_epoch_end()


def pseudo_label(
    model: keras.Model,
    calibration: tuple[Any, Any],
    unlabelled: Any,
    *,
    betas: Sequence[float] = apds.DEFAULT_BETAS,
    thresholds: apds.Thresholds = apds.DEFAULT_THRESHOLDS,
    bin_values: Any = None,
    min_selected: int | float = apds.DEFAULT_MIN_SELECTED,
    pseudo_label: apds.PseudoLabel = apds.DEFAULT_PSEUDO_LABEL,
    score_scale: float | None = None,
    max_selected: int | None = None,
    output: str = "auto",
    batch_size: int = 64,
    verbose: int | str = "auto",
) -> PseudoLabels:
    """One APDS round with a trained model (an :class:`ELTAModel` or any Keras model with
    a C-level head). ``calibration`` is ``(x, y)``; ``unlabelled`` is ``x``. Predictions
    show Keras's progress bar (``verbose``). ``max_selected`` caps the pseudo-labels, most
    confident first (default: no cap)."""
    if not isinstance(calibration, (tuple, list)) or len(calibration) != 2:
        raise ValueError("calibration: expected a pair (x, y) of a labelled calibration set")
    bin_values = bin_values if bin_values is not None else getattr(model, "bin_values", None)
    score_scale = score_scale if score_scale is not None else getattr(model, "score_scale", 1.0)
    x_calibration, y_calibration = calibration
    result = pseudo_label_round(
        _logits(model, x_calibration, output, batch_size, verbose), np.asarray(y_calibration, dtype=np.float64),
        _logits(model, unlabelled, output, batch_size, verbose), betas=betas, thresholds=thresholds,
        bin_values=bin_values, min_selected=min_selected, pseudo_label=pseudo_label, score_scale=score_scale,
        max_selected=max_selected,
    )
    return PseudoLabels(result.grid, np.asarray(result.indices), np.asarray(result.labels), result.num_selected)
