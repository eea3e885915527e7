"""The APDS pseudo-label round, framework-neutral: grid search on a calibration set,
selection from the unlabelled pool, and an optional cap [paper 3.4-3.5, Eqs. 7-10].

Every entry point (the torch ``SelfTraining``, the Keras ``pseudo_label`` helper and the
``elta`` command) runs this one function on logits it has predicted, then trains round 2
on ``L = L_s + L_u`` (Eq. 10) in one of two meanings, named by :data:`Round2`:

- ``"concat"`` (default): the pseudo-labelled samples are appended to the labelled
  set, so they go through TFA and FLSA like every other sample. This is the paper's
  text ("incorporated into the original dataset for subsequent training epochs",
  section 3.5) and what the authors' code does.
- ``"separate"``: ``L_u`` is the task loss on separate pseudo-labelled batches, added to
  each labelled batch's ``L_s`` (no TFA or FLSA on pseudo-labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from elta_core import apds
from elta_core.backends import get_backend

Tensor = Any
Round2 = Literal["concat", "separate"]
ROUND2_MODES: tuple[Round2, ...] = ("concat", "separate")
DEFAULT_ROUND2: Round2 = "concat"

__all__ = ["DEFAULT_ROUND2", "ROUND2_MODES", "PseudoLabelRound", "Round2", "check_round2", "pseudo_label_round"]


def check_round2(round2: str) -> Round2:
    if round2 not in ROUND2_MODES:
        raise ValueError(f"round2: expected 'concat' or 'separate', got {round2!r}")
    return round2


@dataclass(frozen=True)
class PseudoLabelRound:
    """The round's outcome: the grid search, the kept pool rows (``indices``, in pool
    order) with their pseudo-label distributions (``labels``), and how many passed the
    threshold before the cap (``num_selected``)."""

    grid: apds.GridSearchResult
    indices: Tensor
    labels: Tensor
    num_selected: int

    @property
    def num_kept(self) -> int:
        return int(get_backend(self.indices).shape(self.indices)[0])


def pseudo_label_round(
    calibration_logits: Tensor,
    calibration_labels: Tensor,
    pool_logits: Tensor,
    *,
    betas: Sequence[float] = apds.DEFAULT_BETAS,
    thresholds: apds.Thresholds = apds.DEFAULT_THRESHOLDS,
    bin_values: Any = None,
    min_selected: int | float = apds.DEFAULT_MIN_SELECTED,
    pseudo_label: apds.PseudoLabel = apds.DEFAULT_PSEUDO_LABEL,
    score_scale: float = 1.0,
    max_selected: int | None = None,
) -> PseudoLabelRound:
    """Grid search (Eq. 9) on the calibration logits, :func:`~elta_core.apds.select` on the
    pool with the chosen (beta, t), then at most ``max_selected`` of them, most confident
    first (:func:`~elta_core.apds.keep_most_confident`; None keeps all)."""
    pool_backend = get_backend(pool_logits)
    calibration_levels = get_backend(calibration_logits).shape(calibration_logits)[-1]
    if pool_backend.shape(pool_logits)[-1] != calibration_levels:
        raise ValueError(f"pool_logits: the model gave {pool_backend.shape(pool_logits)[-1]} levels for the pool "
                         f"and {calibration_levels} for the calibration set")
    if pool_backend.shape(pool_logits)[0] == 0:
        raise ValueError("pool_logits: the unlabelled pool is empty; APDS needs images to pseudo-label")
    grid = apds.grid_search(calibration_logits, calibration_labels, betas, thresholds, bin_values, min_selected,
                            pseudo_label, score_scale=score_scale)
    chosen = apds.select(pool_logits, grid.beta, grid.threshold, bin_values, pseudo_label=pseudo_label,
                         score_scale=score_scale)
    kept = chosen
    if max_selected is not None:
        kept = apds.keep_most_confident(pool_logits, chosen, grid.beta, max_selected, bin_values,
                                        score_scale=score_scale)
    return PseudoLabelRound(grid, kept.indices, kept.labels, int(pool_backend.shape(chosen.indices)[0]))
