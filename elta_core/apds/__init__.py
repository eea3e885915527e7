"""APDS, Adaptive Probability Distribution Sharpening (paper 3.4).

Each predicted distribution is sharpened with its own temperature
``tau_i(beta) = exp(-beta |s_hat_i - s_bar|)`` [Eq. 8], so predictions far from the mean
score (the tails) are sharpened most and pass a confidence threshold more easily.
A grid search over (beta, threshold) on a labelled calibration set [Eq. 9, with the
mean instead of the paper's sum] picks the setting whose selected pseudo-labels are
most accurate; :func:`select` then keeps the confident samples of an unlabelled pool.

``beta`` is in inverse label units (defaults for scores on 1..10): pass ``score_scale``
to use the same betas with another score range.
"""

from elta_core.apds.grid import GridCell, GridSearchResult, grid_search
from elta_core.apds.sharpening import (CONFIDENCE_QUANTILES, DEFAULT_BETAS, DEFAULT_MIN_SELECTED, DEFAULT_PSEUDO_LABEL,
                                       DEFAULT_THRESHOLDS, MAX_SHARPENING_EXPONENT, PAPER_THRESHOLDS, PseudoLabel,
                                       Selection, Thresholds, keep_most_confident, predicted_scores, select, sharpen,
                                       temperatures)

__all__ = [
    "CONFIDENCE_QUANTILES", "DEFAULT_BETAS", "DEFAULT_MIN_SELECTED", "DEFAULT_PSEUDO_LABEL", "DEFAULT_THRESHOLDS",
    "GridCell", "GridSearchResult", "MAX_SHARPENING_EXPONENT", "PAPER_THRESHOLDS", "PseudoLabel", "Selection",
    "Thresholds", "grid_search", "keep_most_confident", "predicted_scores", "select", "sharpen", "temperatures",
]
