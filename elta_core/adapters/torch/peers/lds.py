"""LDS: label distribution smoothing (Yang et al., "Delving into Deep Imbalanced Regression",
ICML 2021)."""

from __future__ import annotations

from typing import Any

import torch

from elta_core.adapters.torch.peers.binning import Binned, bin_index, smooth_bins

LDS_REWEIGHTS = ("sqrt_inv", "inverse")


def lds_weights(train_scores: torch.Tensor, low: float, high: float, num_bins: int, window: torch.Tensor,
                reweight: str = "sqrt_inv") -> torch.Tensor:
    """LDS (DIR's label distribution smoothing), per bin, as the authors compute it: the
    training scores' bin counts ``n``, made ``sqrt(n)`` (``reweight="sqrt_inv"``) or
    ``clip(n, 5, 1000)`` (``"inverse"``), convolved with ``window`` (zero beyond the ends),
    inverted, and scaled to average 1 over the training samples. For ``"inverse"`` the
    authors' counts are an integer array, which SciPy's convolution keeps integer: the
    smoothed values (of a window scaled to peak 1, as theirs) are truncated, as there
    (docs/design.md, "The peers"). A bin whose smoothed value is 0 (far from every training
    score) gets the largest weight of a populated bin, not an infinite one."""
    if reweight not in LDS_REWEIGHTS:
        raise ValueError(f"reweight: expected one of {', '.join(map(repr, LDS_REWEIGHTS))}, got {reweight!r}")
    bins = bin_index(train_scores, low, high, num_bins)
    counts = torch.bincount(bins, minlength=num_bins).double()
    if reweight == "sqrt_inv":
        density = smooth_bins(counts.sqrt(), window.double(), "constant")
    else:  # their clipped counts stay integers: the smoothing (by a window whose peak is 1) is truncated
        window = window.double() / window.max()
        density = torch.trunc(smooth_bins(counts.clamp(5, 1000), window, "constant"))
    positive = density > 0
    density = torch.where(positive, density, density[positive].min())
    weights = 1.0 / density
    return weights * (bins.numel() / weights[bins].sum())

class LDS(Binned):
    """Label distribution smoothing (Yang et al., "Delving into Deep Imbalanced
    Regression", ICML 2021): each sample's task loss is weighted by the inverse of the
    kernel-smoothed square root of the training labels' bin counts at its label
    (:func:`lds_weights`, as the authors' code). Defaults: a Gaussian kernel of 5 bins
    with sigma 2 bins and the inverse-square-root weighting, the paper's and the code's
    setting; 100 equal bins over the training scores' range (the paper bins ages by year;
    this library's choice for continuous ratings).

    Args:
        train_labels: the training set's labels, scores (N,) or distributions (N, C), whose
            mean score is binned (the EMD that is weighted stays on distributions).
        reweight: ``"sqrt_inv"`` or ``"inverse"`` (counts clipped to [5, 1000] first).
    """

    replaces_task_loss = True

    def __init__(self, train_labels: Any, num_bins: int = 100, kernel_size: int = 5, sigma: float = 2.0,
                 reweight: str = "sqrt_inv"):
        super().__init__(train_labels, num_bins, kernel_size, sigma)
        if reweight not in LDS_REWEIGHTS:
            raise ValueError(f"reweight: expected one of {', '.join(map(repr, LDS_REWEIGHTS))}, got {reweight!r}")
        self.reweight = reweight
        self.weights: torch.Tensor | None = None

    def bind(self, config: Any) -> None:
        super().bind(config)
        self.weights = lds_weights(self.train_scores, self.low, self.high, self.num_bins, self.window, self.reweight)

    def sample_weights(self, scores: torch.Tensor) -> torch.Tensor:
        return self.weights.to(scores.device)[self.bins(scores)].to(scores.dtype)
