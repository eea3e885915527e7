"""The established deep-imbalanced-regression methods, as plug-ins of :class:`ELTAWrapper`.

ELTA's paper compares against these; ``elta compare`` trains them beside ELTA on the
same data and seeds. Each is written from its paper's equations (not from the authors'
code) as a pure function, which the tests check against a float64 reference, and a
small ``nn.Module`` that the wrapper calls at one of five points of a training step:

====================  =======================================================  ===========
method                what it changes                                          hook
====================  =======================================================  ===========
:class:`LDS`          weights each sample's task loss by its smoothed rarity   ``sample_weights``
:class:`FDS`          recalibrates the head's input features per label bin     ``calibrate``
:class:`RankSim`      adds a regulariser on feature- vs label-similarity ranks ``regulariser``
:class:`CMixup`       mixes each sample with a label-near partner              ``mix``
:class:`BalancedMSE`  replaces the task loss by the batch Monte-Carlo BMC      ``task_loss``
====================  =======================================================  ===========

They combine with TFA and FLSA and with each other (``ELTAWrapper(model, "fc",
peers=[LDS(train_labels), RankSim()])``), except two that replace the task loss (LDS
and Balanced MSE), which exclude each other and a user's ``task_loss``. They are torch
only: ELTA's own equations are the backend-neutral core, these are comparison points.

Labels: every method works on label *scores*. Distribution labels (vote histograms) are
reduced to their mean score for the bins, ranks, distances and the BMC target, as the
docstrings say; the task loss that LDS weights stays the EMD between distributions.

Defaults: the hyper-parameters below are the settings each paper reports for its image
benchmarks, rescaled from those benchmarks' label units (years of age) to a 1..10 rating
scale by ``score_scale``; ``docs/design.md`` ("The peers") lists each with its provenance
and says which are this library's choice. The papers were not at hand when this module
was written, so the docstrings name each paper and method, not its equation numbers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elta_core import _checks, losses
from elta_core.peer_names import PEER_NAMES
from elta_core.step import SCALE_SLACK

# -- the equations --------------------------------------------------------------------


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


LDS_REWEIGHTS = ("sqrt_inv", "inverse")


def lds_weights(train_scores: torch.Tensor, low: float, high: float, num_bins: int, window: torch.Tensor,
                reweight: str = "sqrt_inv") -> torch.Tensor:
    """LDS (DIR's label distribution smoothing), per bin, as the authors compute it: the
    training scores' bin counts ``n``, made ``sqrt(n)`` (``reweight="sqrt_inv"``) or
    ``clip(n, 5, 1000)`` (``"inverse"``), convolved with ``window`` (zero beyond the ends),
    inverted, and scaled to average 1 over the training samples. A bin whose smoothed value
    is 0 (far from every training score) gets the largest weight of a populated bin, not an
    infinite one."""
    if reweight not in LDS_REWEIGHTS:
        raise ValueError(f"reweight: expected one of {', '.join(map(repr, LDS_REWEIGHTS))}, got {reweight!r}")
    bins = bin_index(train_scores, low, high, num_bins)
    counts = torch.bincount(bins, minlength=num_bins).double()
    counts = counts.sqrt() if reweight == "sqrt_inv" else counts.clamp(5, 1000)
    density = smooth_bins(counts, window.double(), "constant")
    positive = density > 0
    density = torch.where(positive, density, density[positive].min())
    weights = 1.0 / density
    return weights * (bins.numel() / weights[bins].sum())


def fds_calibrate(features: torch.Tensor, bins: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                  smoothed_mean: torch.Tensor, smoothed_var: torch.Tensor,
                  clip: tuple[float, float] = (0.1, 10.0)) -> torch.Tensor:
    """FDS (DIR's feature distribution smoothing, diagonal form): ``z~ = (z - mu_b) *
    sqrt(clip(var~_b / var_b)) + mu~_b`` for each feature row ``z`` in bin ``b``. As the
    authors' code: a feature whose variance ``var_b`` is 0 (a constant feature, a bin of
    one sample) is left as it is, and so is every feature of a bin whose variances sum
    below 1e-10."""
    v1, v2 = var[bins], smoothed_var[bins]
    usable = (v1 != 0) & (v1.sum(1, keepdim=True) >= 1e-10)
    ratio = torch.where(usable, v2 / torch.where(usable, v1, torch.ones_like(v1)), torch.ones_like(v1)).clamp(*clip)
    calibrated = (features - mean[bins].to(features)) * ratio.sqrt().to(features) + smoothed_mean[bins].to(features)
    return torch.where(usable.to(features.device), calibrated, features)


def _ranks(rows: torch.Tensor) -> torch.Tensor:
    """Each row's descending ranks, normalised: the largest value gets ``1/n``, the
    smallest ``1``; of equal values the later one ranks first (the authors' order: an
    ascending sort, reversed)."""
    n = rows.shape[1]
    order = torch.argsort(rows, dim=1, stable=True).flip(1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=rows.device).expand_as(order))
    return (ranks + 1).to(rows.dtype) / n


class _BlackboxRanks(torch.autograd.Function):
    """Ranks with the blackbox-differentiation gradient of Vlastelica et al. (ICLR 2020), as
    RankSim uses it: ``d/da = -(rank(a) - rank(a + lambda * g)) / lambda``."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, interpolation: float) -> torch.Tensor:
        ranks = _ranks(rows)
        ctx.interpolation = interpolation
        ctx.save_for_backward(rows, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, ranks = ctx.saved_tensors
        perturbed = _ranks(rows + ctx.interpolation * grad)
        return -(ranks - perturbed) / ctx.interpolation, None


def ranksim_loss(features: torch.Tensor, scores: torch.Tensor, interpolation: float = 2.0) -> torch.Tensor:
    """RankSim (Gong et al., ICML 2022; the loss without the batch subsampling): the sum
    over rows ``i`` of ``|| rank(S^y[i]) - rank(S^z[i]) ||^2 / n``, the per-row mean squared
    rank difference as the authors' ``batchwise_ranking_regularizer`` sums it, where
    ``S^z`` is the cosine similarity of the features and ``S^y[i, j] = -|y_i - y_j|``; the
    features' ranks carry the blackbox gradient with ``interpolation`` lambda. 0 when
    every row ranks the same in both (and for fewer than 2 rows)."""
    if features.shape[0] < 2:
        return features.sum() * 0
    flat = F.normalize(features.reshape(features.shape[0], -1), dim=1)
    feature_similarity = flat @ flat.T
    scores = scores.detach().to(feature_similarity.dtype)
    label_ranks = _ranks(-(scores[:, None] - scores[None, :]).abs())
    feature_ranks = _BlackboxRanks.apply(feature_similarity, interpolation)
    return ((feature_ranks - label_ranks) ** 2).mean(1).sum()


def unique_label_rows(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """RankSim's batch subsampling: when labels repeat, one row per distinct label, drawn
    uniformly among that label's rows, in the order of the sorted labels (the authors'
    order); when none repeats, every row in batch order."""
    values, inverse = torch.unique(scores.detach(), return_inverse=True)
    if values.numel() == scores.numel():
        return torch.arange(scores.numel(), device=scores.device)
    order = torch.randperm(scores.numel(), generator=generator).to(scores.device)
    # the first place in the random order that each label takes: uniform over its rows
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    first = torch.full((values.numel(),), scores.numel(), dtype=torch.long, device=scores.device)
    first.scatter_reduce_(0, inverse, position, reduce="amin", include_self=True)
    return order[first]


def cmixup_probabilities(scores: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """C-Mixup (Yao et al., NeurIPS 2022; its sampling rule): ``P[i, j]``, the probability that sample
    ``i`` is mixed with ``j``, proportional to ``exp(-(y_i - y_j)^2 / (2 bandwidth^2))``
    over the batch (``j = i`` included, as in the paper); each row sums to 1."""
    scores = scores.detach().double()
    distance = (scores[:, None] - scores[None, :]) / bandwidth  # divided first: a tiny bandwidth overflows to inf
    return torch.softmax(-0.5 * distance**2, dim=1)


def bmc_loss(predicted: torch.Tensor, targets: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """Balanced MSE, batch Monte-Carlo form (Ren et al., CVPR 2022):
    ``mean_i -log softmax_j(-(p_i - y_j)^2 / (2 sigma^2))[i]``, times ``2 sigma^2`` (not
    differentiated) to keep the MSE's scale. With labels spread evenly over a range much
    wider than sigma it differs from the MSE by a constant only."""
    predicted = predicted.reshape(-1, 1)
    targets = targets.reshape(1, -1).to(predicted)
    logits = -((predicted - targets) ** 2) / (2 * noise_var)
    loss = F.cross_entropy(logits, torch.arange(predicted.shape[0], device=predicted.device))
    return loss * (2 * noise_var).detach()


# -- the plug-ins ---------------------------------------------------------------------


def _fraction(value: Any, name: str) -> float:
    number = _checks.finite_number(value, name, "a number in [0, 1)")
    if not 0 <= number < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return number


def _scores_of(labels: Any, bin_values: Any, name: str) -> torch.Tensor:
    """Scores (N,) of labels given as scores or distributions (their mean score)."""
    tensor = torch.as_tensor(np.asarray(labels, dtype=np.float64) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim not in (1, 2) or tensor.shape[0] < 1:
        raise ValueError(f"{name}: expected the training labels, scores (N,) or distributions (N, C), "
                         f"got shape {tuple(tensor.shape)}")
    try:
        return losses.label_scores(tensor.double(), bin_values)  # checked: finite, PMF rows
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


class Peer(nn.Module):
    """A plug-in of :class:`ELTAWrapper`; every hook does nothing unless overridden. The
    wrapper calls :meth:`bind` once with its :class:`~elta_core.step.ELTAConfig`.

    Class attributes say where it acts: ``stage`` ``"input"`` (:meth:`mix` on the model's
    input), ``"head"`` (:meth:`calibrate`, then :meth:`mix`, on the head's input) or None;
    ``replaces_task_loss`` (:meth:`sample_weights` weights the default task loss, else
    :meth:`task_loss` replaces it); ``needs_features`` (:meth:`regulariser` reads the
    features FLSA aligns); ``needs_train_labels`` (its constructor takes them)."""

    name = "peer"
    stage: str | None = None
    replaces_task_loss = False
    needs_features = False
    needs_train_labels = False

    def bind(self, config: Any) -> None:
        self.bin_values = config.bin_values
        self.score_scale = config.score_scale

    def check_levels(self, level_values: Sequence[float] | None) -> None:
        """Called at every training step with the rating value of each of the model's
        output levels (None for a score head without ``bin_values``)."""

    def mix(self, x: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, labels

    def calibrate(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return features

    def sample_weights(self, scores: torch.Tensor) -> torch.Tensor | None:
        return None

    def task_loss(self, predicted_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor | None:
        return None

    def regulariser(self, features: torch.Tensor, scores: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    def end_epoch(self) -> None:
        """Called once at the end of every training epoch (``fit`` does it)."""


class _Binned(Peer):
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
        self.train_scores = _scores_of(self._train_labels, config.bin_values, f"{self.name}: train_labels")
        self._train_levels = _levels_of(self._train_labels)
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


def _levels_of(labels: Any) -> int | None:
    """The number of levels of distribution labels (N, C > 1); None for scores."""
    shape = tuple(labels.shape) if hasattr(labels, "shape") else np.shape(labels)
    return int(shape[1]) if len(shape) == 2 and shape[1] > 1 else None


class LDS(_Binned):
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


class FDS(_Binned):
    """Feature distribution smoothing (Yang et al., ICML 2021), on the schedule of the
    authors' code: the features entering the head are recalibrated per label bin
    (:func:`fds_calibrate`) from their running mean and variance to those statistics
    smoothed across neighbouring bins, in training only.

    Each epoch's (calibrated) features are collected per bin (under DDP, summed over the
    ranks); at the epoch's end (:meth:`end_epoch`) the running statistics take the
    epoch's mean and unbiased variance (a bin of one sample: variance 0), with
    ``momentum`` from the second epoch on; a bin never seen keeps mean 0 and variance 1.
    Calibration is the identity in the first two epochs; from the third on it reads the
    running statistics up to the previous epoch and the smoothed ones up to the epoch
    before (the authors' last-epoch buffers alias the running ones; docs/design.md, "The
    peers"). Diagonal covariance, as the paper's implementation. Defaults: Gaussian kernel
    of 5 bins, sigma 2, momentum 0.9 and the variance ratio clipped to [0.1, 10], as the
    authors' code; 100 bins over the training scores' range (this library's choice).

    Args:
        train_labels: the training labels (their mean scores give the bins' range).
    """

    stage = "head"

    def __init__(self, train_labels: Any, num_bins: int = 100, kernel_size: int = 5, sigma: float = 2.0,
                 momentum: float = 0.9, clip: tuple[float, float] = (0.1, 10.0)):
        super().__init__(train_labels, num_bins, kernel_size, sigma)
        self.momentum = _fraction(momentum, "momentum")
        if len(clip) != 2 or not 0 < clip[0] <= 1 <= clip[1]:
            raise ValueError(f"clip: expected (low, high) with 0 < low <= 1 <= high, got {clip!r}")
        self.clip = (float(clip[0]), float(clip[1]))
        self.epochs_done = 0
        self.epoch_sums: torch.Tensor | None = None
        self.running: dict[str, torch.Tensor] | None = None  # mean, var (bins, D)
        self.smoothed: dict[str, torch.Tensor] | None = None

    def calibrate(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        flat = features.reshape(features.shape[0], -1)
        self._check_width(flat.shape[1])
        bins = self.bins(scores)
        if self.epochs_done >= 2:
            on = lambda stats, key: stats[key].to(flat.device)  # noqa: E731
            flat = fds_calibrate(flat, bins, on(self.running, "mean"), on(self.running, "var"),
                                 on(self.smoothed, "mean"), on(self.smoothed, "var"), self.clip)
        self._observe(flat.detach(), bins)
        return flat.reshape(features.shape)

    def _check_width(self, width: int) -> None:
        if self.running is not None:
            known = self.running["mean"].shape[1]
        elif self.epoch_sums is not None:
            known = (self.epoch_sums.shape[1] - 1) // 2
        else:
            return
        if width != known:
            raise ValueError(f"fds: the features entering the head changed width, from {known} to {width}")

    def _observe(self, flat: torch.Tensor, bins: torch.Tensor) -> None:
        """Add the rows to this epoch's per-bin sums: (K, 1 + 2 D) count, sum, sum of squares."""
        values = flat.double()
        rows = torch.cat([torch.ones_like(values[:, :1]), values, values**2], dim=1)
        sums = torch.zeros(self.num_bins, rows.shape[1], dtype=torch.float64, device=rows.device).index_add_(0, bins, rows)
        self.epoch_sums = sums if self.epoch_sums is None else self.epoch_sums + sums

    def end_epoch(self) -> None:
        if self.epoch_sums is None:
            return
        sums = self.epoch_sums
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from elta_core.adapters.torch.distributed import communication_device

            summed = sums.to(communication_device())
            torch.distributed.all_reduce(summed)
            sums = summed.to(sums.device)
        width = (sums.shape[1] - 1) // 2
        count = sums[:, :1]
        seen = sums[:, 0] > 0
        mean = sums[:, 1:1 + width] / count.clamp_min(1)
        squares = (sums[:, 1 + width:] - count * mean**2).clamp_min(0)
        var = torch.where(count > 1, squares / (count - 1).clamp_min(1), torch.zeros_like(squares))  # unbiased
        if self.running is None:
            self.running = {"mean": torch.zeros_like(mean), "var": torch.ones_like(var)}
        if self.epochs_done >= 1:  # what calibrates the next epoch: the statistics before this update
            self.smoothed = {"mean": smooth_bins(self.running["mean"], self.window, "reflect"),
                             "var": smooth_bins(self.running["var"], self.window, "reflect")}
        keep = 0.0 if self.epochs_done == 0 else self.momentum
        for key, value in (("mean", mean), ("var", var)):
            folded = keep * self.running[key] + (1 - keep) * value
            self.running[key] = torch.where(seen[:, None], folded, self.running[key])
        self.epochs_done += 1
        self.epoch_sums = None

    def get_extra_state(self) -> dict:
        return {"running": self.running, "smoothed": self.smoothed, "epoch_sums": self.epoch_sums,
                "epochs_done": self.epochs_done, **self._geometry()}

    def set_extra_state(self, state: dict) -> None:
        saved = {key: state.get(key) for key in ("num_bins", "low", "high")}
        if saved != self._geometry():
            raise ValueError(f"fds: the saved statistics are for bins {saved}, this FDS has {self._geometry()}; "
                             "load them into an FDS built with the same num_bins and training labels")
        self.running, self.smoothed, self.epoch_sums = state["running"], state["smoothed"], state["epoch_sums"]
        self.epochs_done = int(state["epochs_done"])


class RankSim(Peer):
    """RankSim (Gong, Mori and Tung, "RankSim: Ranking Similarity Regularization for Deep
    Imbalanced Regression", ICML 2022): ``weight * ranksim_loss`` on the features FLSA
    aligns (the head's input), over one row per distinct label in the batch. Defaults:
    ``interpolation`` (lambda) 2 and ``weight`` (gamma) 100, the setting the paper reports
    for its image benchmarks.
    """

    needs_features = True

    def __init__(self, weight: float = 100.0, interpolation: float = 2.0):
        super().__init__()
        self.weight = _checks.positive_number(weight, "weight")
        self.interpolation = _checks.positive_number(interpolation, "interpolation")

    def regulariser(self, features: torch.Tensor, scores: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        rows = unique_label_rows(scores, generator)
        return self.weight * ranksim_loss(features[rows], scores[rows], self.interpolation)


class CMixup(Peer):
    """C-Mixup (Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS
    2022): each sample ``i`` of the batch is mixed with a partner ``j`` drawn with
    probability :func:`cmixup_probabilities` (closer labels, likelier partners), with one
    ``lambda ~ Beta(alpha, alpha)`` per batch; inputs and labels (scores or distributions)
    are mixed alike and the batch keeps its size. ``at="input"`` mixes the images (the
    paper's image setting), ``"features"`` the head's input (its manifold-mixup variant).
    Defaults: ``alpha`` 2 and ``bandwidth`` 0.5 points of a 1..10 scale (times
    ``score_scale``); the paper tunes the bandwidth per dataset, so both are this
    library's choice.
    """


    def __init__(self, bandwidth: float | None = None, alpha: float = 2.0, at: str = "input"):
        super().__init__()
        self.bandwidth = None if bandwidth is None else _checks.positive_number(bandwidth, "bandwidth")
        self.alpha = _checks.positive_number(alpha, "alpha")
        if at not in ("input", "features"):
            raise ValueError(f"at: expected 'input' or 'features', got {at!r}")
        self.at = at
        self.stage = "input" if at == "input" else "head"

    def mix(self, x: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] < 2:
            return x, labels
        bandwidth = self.bandwidth if self.bandwidth is not None else 0.5 * self.score_scale
        partners = torch.multinomial(cmixup_probabilities(scores, bandwidth).cpu(), 1, generator=generator)[:, 0]
        lam = _beta(self.alpha, generator)
        partners = partners.to(x.device)
        mixed_x = lam * x + (1 - lam) * x[partners]
        mixed_labels = lam * labels + (1 - lam) * labels[partners.to(labels.device)]
        return mixed_x, mixed_labels


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """One draw of Beta(alpha, alpha) from ``generator``: ``G1 / (G1 + G2)`` of two
    Gamma(alpha) draws, in log space (``log G = log Gamma(alpha + 1) + log(U) / alpha``),
    so that a small alpha, whose Gamma draws underflow to 0, still gives its U-shaped
    factors near 0 and 1 rather than 0 / 0."""
    gammas = torch._standard_gamma(torch.full((2,), alpha + 1.0, dtype=torch.float64), generator=generator)
    uniforms = torch.rand(2, dtype=torch.float64, generator=generator).clamp_min(torch.finfo(torch.float64).tiny)
    logs = gammas.log() + uniforms.log() / alpha
    return float(torch.sigmoid(logs[0] - logs[1]))


class BalancedMSE(Peer):
    """Balanced MSE (Ren et al., "Balanced MSE for Imbalanced Visual Regression", CVPR
    2022), batch Monte-Carlo form (:func:`bmc_loss`) with a learnable noise scale sigma,
    which is a parameter of the wrapper (an optimizer over ``wrapper.parameters()`` trains
    it, at the model's learning rate; the paper gives it its own). It replaces the task
    loss by a loss on predicted and true *scores*: on a distribution head, the expected
    score is what it trains, and distribution labels count by their mean score. Default:
    sigma starts at 1 label unit of the paper's age benchmarks, here 1 point of a 1..10
    scale (times ``score_scale``).
    """

    replaces_task_loss = True

    def __init__(self, init_sigma: float | None = None):
        super().__init__()
        self.init_sigma = None if init_sigma is None else _checks.positive_number(init_sigma, "init_sigma")
        self.noise_sigma = nn.Parameter(torch.tensor(1.0))

    def bind(self, config: Any) -> None:
        super().bind(config)
        with torch.no_grad():
            self.noise_sigma.fill_(self.init_sigma if self.init_sigma is not None else config.score_scale)

    def task_loss(self, predicted_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return bmc_loss(predicted_scores.float(), scores.float(), self.noise_sigma.float() ** 2)


PEERS: dict[str, type[Peer]] = dict(zip(PEER_NAMES, (LDS, FDS, RankSim, CMixup, BalancedMSE), strict=True))
for _name, _kind in PEERS.items():
    _kind.name = _name


def check_peers(peers: Sequence[Peer], user_task_loss: bool) -> list[Peer]:
    """The wrapper's ``peers`` argument, checked: Peer instances, each kind once, at most
    one that replaces the task loss, and none of those beside a user ``task_loss``."""
    peers = list(peers)
    for peer in peers:
        if not isinstance(peer, Peer):
            raise ValueError(f"peers: expected plug-ins of elta_core.adapters.torch.peers "
                             f"({', '.join(cls.__name__ for cls in PEERS.values())}), got {type(peer).__name__}")
    names = [p.name for p in peers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"peers: {', '.join(twice)} given more than once")
    replacing = task_loss_changers(peers)
    if replacing and user_task_loss:
        raise ValueError(f"peers: {replacing[0]} changes the task loss, so it cannot be combined with a task_loss "
                         "function; leave task_loss out, or the peer")
    return peers


def task_loss_changers(peers: Sequence[Peer | type[Peer]]) -> list[str]:
    """The names of the peers (instances or classes) that change the task loss; more than
    one is refused by name."""
    replacing = [peer.name for peer in peers if peer.replaces_task_loss]
    if len(replacing) > 1:
        raise ValueError(f"peers: {' and '.join(replacing)} both change the task loss; use one of them")
    return replacing
