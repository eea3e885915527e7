"""Equal-width label bins and DIR's smoothing kernel, shared by LDS and FDS (Yang et al.,
ICML 2021)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from elta_core import _checks
from elta_core.adapters.torch.peers.base import Peer, scores_of
from elta_core.step import SCALE_SLACK

MAX_BINS = 100_000  # label bins; more than this is a mistake, and allocates (bins, features) statistics


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """DIR's smoothing kernel: a unit impulse of ``size`` (odd) taps blurred by a Gaussian of
    ``sigma`` taps, truncated at 4 sigma, with the signal reflected at both ends (what
    ``scipy.ndimage.gaussian_filter1d`` does by default), normalised to sum 1 (float64).
    Where the Gaussian reaches past the taps, the reflection folds its tails back in: for
    (5, 2) it is [0.186 0.205 0.217 0.205 0.186], not the sampled Gaussian [0.153 0.222
    0.251 0.222 0.153] (docs/design.md, "The peers")."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd number of bins >= 1, got {size!r}")
    sigma = _checks.positive_number(sigma, "sigma")
    radius = int(4.0 * sigma + 0.5)
    if radius > 10 * MAX_BINS:
        raise ValueError(f"sigma: expected at most {MAX_BINS} bins, got {sigma!r}")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gaussian = torch.exp(-0.5 * (offsets / sigma) ** 2)
    gaussian = gaussian / gaussian.sum()
    centre = size // 2
    # out[i] = sum_k gaussian[k] * impulse[reflect(i + k)]: the taps k whose reflected
    # position is the centre. Reflection ("d c b a | a b c d | d c b a") has period 2 size.
    position = (torch.arange(size, dtype=torch.long)[:, None] + offsets.long()[None, :]) % (2 * size)
    position = torch.where(position < size, position, 2 * size - 1 - position)
    window = ((position == centre).double() * gaussian).sum(1)
    return window / window.sum()


def smooth_bins(values: torch.Tensor, window: torch.Tensor, edges: str = "constant") -> torch.Tensor:
    """Convolve per-bin ``values`` ((K,) or (K, D), along the bins) with ``window``:
    ``out[b] = sum_d window[d] * values[b + d]`` (DIR: the label density for LDS;
    the per-bin feature statistics for FDS). Beyond the first and last bin the values are 0
    (``edges="constant"``) or mirrored about the end bins (``"reflect"``)."""
    column = values.reshape(values.shape[0], -1).T.unsqueeze(1)  # (D, 1, K)
    half = window.numel() // 2
    if edges == "reflect" and values.shape[0] > half:
        column = F.pad(column, (half, half), mode="reflect")
        padding = 0
    else:
        padding = half
    smoothed = F.conv1d(column, window.to(column).flip(0).view(1, 1, -1), padding=padding)
    return smoothed.squeeze(1).T.reshape(values.shape)


def bin_index(scores: torch.Tensor, low: float, high: float, num_bins: int) -> torch.Tensor:
    """The bin of each score among ``num_bins`` equal bins over ``[low, high]``; scores
    outside fall in the first or last bin."""
    position = (scores.detach().double() - low) * num_bins / (high - low)  # not / width: 1.75 / 0.07 < 25
    nearest = position.round()
    # a score on an edge (up to rounding) starts the bin above it, as on paper
    position = torch.where((position - nearest).abs() <= 1e-9 * max(num_bins, 1), nearest, position)
    return position.floor().clamp(0, num_bins - 1).long()

class Binned(Peer):
    """Equal-width label bins over the training scores' range (LDS and FDS). The training
    labels must be on the wrapper's rating scale: distributions over its levels, scores
    within its values (checked when the wrapper is built if it has ``bin_values``, else at
    the first step, once the model's levels are known)."""

    needs_train_labels = True

    def __init__(self, train_labels: Any, num_bins: int, kernel_size: int, sigma: float):
        super().__init__()
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or not 2 <= num_bins <= MAX_BINS:
            raise ValueError(f"num_bins: expected an int in [2, {MAX_BINS}], got {num_bins!r}")
        self.num_bins = num_bins
        self.window = gaussian_window(kernel_size, sigma)
        self._train_labels = train_labels
        self.train_scores: torch.Tensor | None = None
        self._checked_levels: tuple[float, ...] | None = None

    def bind(self, config: Any) -> None:
        super().bind(config)
        self.train_scores = scores_of(self._train_labels, config.bin_values, f"{self.name}: train_labels")
        self._train_levels = levels_of(self._train_labels)
        low, high = float(self.train_scores.min()), float(self.train_scores.max())
        if high <= low:
            raise ValueError(f"{self.name}: train_labels: every training score is {low:g}; label bins need a range")
        self.low, self.high = low, high
        if config.bin_values is not None:
            self.check_levels(config.bin_values)

    def check_levels(self, level_values: Sequence[float] | None) -> None:
        """Refuse training labels that are not on the scale of the model's levels
        (``level_values``, the rating value of each output; None for a score head without
        ``bin_values``, where there is nothing to check against)."""
        if level_values is None or tuple(level_values) == self._checked_levels:
            return
        values = tuple(float(v) for v in level_values)
        where = f"{self.name}: train_labels"
        if self._train_levels is not None and self._train_levels != len(values):
            raise ValueError(f"{where}: distributions over {self._train_levels} levels, but the model has "
                             f"{len(values)}; give the training labels the model is trained on")
        slack = SCALE_SLACK * (values[-1] - values[0])
        if self.low < values[0] - slack or self.high > values[-1] + slack:
            raise ValueError(f"{where}: scores {self.low:.4g}..{self.high:.4g}, off the model's rating scale "
                             f"{values[0]:g}..{values[-1]:g}; rescale them, or give the wrapper bin_values "
                             "that match them")
        self._checked_levels = values

    def bins(self, scores: torch.Tensor) -> torch.Tensor:
        return bin_index(scores, self.low, self.high, self.num_bins).to(scores.device)

    def _geometry(self) -> dict[str, Any]:
        return {"num_bins": self.num_bins, "low": self.low, "high": self.high}


def levels_of(labels: Any) -> int | None:
    """The number of levels of distribution labels (N, C > 1); None for scores."""
    shape = tuple(labels.shape) if hasattr(labels, "shape") else np.shape(labels)
    return int(shape[1]) if len(shape) == 2 and shape[1] > 1 else None
