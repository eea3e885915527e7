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

# -- the equations --------------------------------------------------------------------


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The symmetric Gaussian kernel of ``size`` (odd) taps, ``exp(-d^2 / 2 sigma^2)`` for
    ``d = -(size//2) .. size//2``, normalised to sum 1 (float64)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd number of bins >= 1, got {size!r}")
    sigma = _checks.positive_number(sigma, "sigma")
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    window = torch.exp(-offsets**2 / (2 * sigma**2))
    return window / window.sum()


def smooth_bins(values: torch.Tensor, window: torch.Tensor, edges: str = "constant") -> torch.Tensor:
    """Convolve per-bin ``values`` ((K,) or (K, D), along the bins) with ``window``:
    ``out[b] = sum_d window[d] * values[b + d]`` (DIR: the label density for LDS;
    the per-bin feature statistics for FDS). Beyond the first and last bin the values are 0
    (``edges="constant"``) or mirrored (``"reflect"``)."""
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
    width = (high - low) / num_bins
    return ((scores.detach().double() - low) / width).floor().clamp(0, num_bins - 1).long()


def lds_weights(train_scores: torch.Tensor, low: float, high: float, num_bins: int, window: torch.Tensor,
                power: float = 0.5) -> torch.Tensor:
    """LDS (DIR's label distribution smoothing): the per-bin weights ``density_smoothed ** -power`` from the
    training scores' histogram convolved with ``window`` (``power`` 1: inverse, 0.5:
    inverse square root), scaled to average 1 over the training samples. A bin whose
    smoothed density is 0 (far from every training score) gets the largest weight of a
    populated bin, not an infinite one."""
    counts = torch.bincount(bin_index(train_scores, low, high, num_bins), minlength=num_bins).double()
    density = smooth_bins(counts, window.double(), "constant")
    positive = density > 0
    density = torch.where(positive, density, density[positive].min())
    weights = density**-power
    per_sample = weights[bin_index(train_scores, low, high, num_bins)]
    return weights * (per_sample.numel() / per_sample.sum())


def fds_calibrate(features: torch.Tensor, bins: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                  smoothed_mean: torch.Tensor, smoothed_var: torch.Tensor, clip: tuple[float, float] = (0.1, 10.0),
                  eps: float = 1e-12) -> torch.Tensor:
    """FDS (DIR's feature distribution smoothing, diagonal form): ``z~ = (z - mu_b) * sqrt(var~_b / var_b) + mu~_b``
    for each feature row ``z`` in bin ``b``, with the variance ratio clipped to ``clip``."""
    ratio = (smoothed_var[bins] / var[bins].clamp_min(eps)).clamp(*clip)
    return ((features - mean[bins].to(features)) * ratio.sqrt().to(features) + smoothed_mean[bins].to(features))


def _ranks(rows: torch.Tensor) -> torch.Tensor:
    """Each row's descending ranks, normalised: the largest value gets ``1/n``, the
    smallest ``1``."""
    n = rows.shape[1]
    order = torch.argsort(rows, dim=1, descending=True, stable=True)
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
    """RankSim (Gong et al., ICML 2022; the loss without the batch subsampling): the mean
    over rows ``i`` of ``|| rank(S^y[i]) - rank(S^z[i]) ||^2 / n`` where ``S^z`` is the
    cosine similarity of the features and ``S^y[i, j] = -|y_i - y_j|``; the features'
    ranks carry the blackbox gradient with ``interpolation`` lambda. 0 when every row
    ranks the same in both (and for fewer than 2 rows)."""
    if features.shape[0] < 2:
        return features.sum() * 0
    flat = F.normalize(features.reshape(features.shape[0], -1), dim=1)
    feature_similarity = flat @ flat.T
    scores = scores.detach().to(feature_similarity.dtype)
    label_ranks = _ranks(-(scores[:, None] - scores[None, :]).abs())
    return F.mse_loss(label_ranks, _BlackboxRanks.apply(feature_similarity, interpolation))


def unique_label_rows(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """RankSim's batch subsampling: one row, drawn at random, for each distinct label."""
    values, inverse = torch.unique(scores.detach(), return_inverse=True)
    if values.numel() == scores.numel():
        return torch.arange(scores.numel(), device=scores.device)
    order = torch.randperm(scores.numel(), generator=generator).to(scores.device)
    first = torch.full((values.numel(),), scores.numel(), dtype=torch.long, device=scores.device)
    first.scatter_reduce_(0, inverse[order], order, reduce="amin", include_self=True)
    return first.sort().values


def cmixup_probabilities(scores: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """C-Mixup (Yao et al., NeurIPS 2022; its sampling rule): ``P[i, j]``, the probability that sample
    ``i`` is mixed with ``j``, proportional to ``exp(-(y_i - y_j)^2 / (2 bandwidth^2))``
    over the batch (``j = i`` included, as in the paper); each row sums to 1."""
    scores = scores.detach().double()
    return torch.softmax(-((scores[:, None] - scores[None, :]) ** 2) / (2 * bandwidth**2), dim=1)


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
    """Equal-width label bins over the training scores' range (LDS and FDS)."""

    needs_train_labels = True

    def __init__(self, train_labels: Any, num_bins: int, kernel_size: int, sigma: float):
        super().__init__()
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
            raise ValueError(f"num_bins: expected an int >= 2, got {num_bins!r}")
        self.num_bins = num_bins
        self.window = gaussian_window(kernel_size, sigma)
        self._train_labels = train_labels
        self.train_scores: torch.Tensor | None = None

    def bind(self, config: Any) -> None:
        super().bind(config)
        self.train_scores = _scores_of(self._train_labels, config.bin_values, f"{self.name}: train_labels")
        low, high = float(self.train_scores.min()), float(self.train_scores.max())
        if high <= low:
            raise ValueError(f"{self.name}: train_labels: every training score is {low:g}; label bins need a range")
        self.low, self.high = low, high

    def bins(self, scores: torch.Tensor) -> torch.Tensor:
        return bin_index(scores, self.low, self.high, self.num_bins).to(scores.device)


class LDS(_Binned):
    """Label distribution smoothing (Yang et al., "Delving into Deep Imbalanced
    Regression", ICML 2021): each sample's task loss is weighted by the
    inverse square root (``power=0.5``) of the training labels' kernel-smoothed density at
    its label. Defaults: a Gaussian kernel of 5 bins with sigma 2 bins and the
    inverse-square-root weighting, the paper's reported setting; 100 equal bins over the
    training scores' range (the paper bins ages by year; this library's choice for
    continuous ratings).

    Args:
        train_labels: the training set's labels, scores (N,) or distributions (N, C), whose
            mean score is binned (the EMD that is weighted stays on distributions).
    """

    name = "lds"
    replaces_task_loss = True

    def __init__(self, train_labels: Any, num_bins: int = 100, kernel_size: int = 5, sigma: float = 2.0,
                 power: float = 0.5):
        super().__init__(train_labels, num_bins, kernel_size, sigma)
        self.power = _checks.positive_number(power, "power")
        self.weights: torch.Tensor | None = None

    def bind(self, config: Any) -> None:
        super().bind(config)
        self.weights = lds_weights(self.train_scores, self.low, self.high, self.num_bins, self.window, self.power)

    def sample_weights(self, scores: torch.Tensor) -> torch.Tensor:
        return self.weights.to(scores.device)[self.bins(scores)].to(scores.dtype)


class FDS(_Binned):
    """Feature distribution smoothing (Yang et al., ICML 2021): the features
    entering the head are recalibrated, per label bin, from their running mean and
    variance to those statistics smoothed across neighbouring bins. The statistics are
    collected over an epoch (under DDP, summed over the ranks), folded into running ones
    with ``momentum`` at the epoch's end (:meth:`end_epoch`), then smoothed; calibration
    starts after the first epoch and acts only in training. Diagonal covariance, as the
    paper's implementation. Defaults: Gaussian kernel of 5 bins, sigma 2, momentum 0.9,
    the paper's setting; 100 bins over the training scores' range and the variance ratio
    clipped to [0.1, 10] (this library's choices).

    Args:
        train_labels: the training labels (their mean scores give the bins' range).
    """

    name = "fds"
    stage = "head"

    def __init__(self, train_labels: Any, num_bins: int = 100, kernel_size: int = 5, sigma: float = 2.0,
                 momentum: float = 0.9, clip: tuple[float, float] = (0.1, 10.0)):
        super().__init__(train_labels, num_bins, kernel_size, sigma)
        self.momentum = _fraction(momentum, "momentum")
        if len(clip) != 2 or not 0 < clip[0] <= 1 <= clip[1]:
            raise ValueError(f"clip: expected (low, high) with 0 < low <= 1 <= high, got {clip!r}")
        self.clip = (float(clip[0]), float(clip[1]))
        self.epoch_sums: torch.Tensor | None = None
        self.running: dict[str, torch.Tensor] | None = None  # mean, var, seen (per bin)
        self.smoothed: dict[str, torch.Tensor] | None = None

    def calibrate(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        flat = features.reshape(features.shape[0], -1)
        bins = self.bins(scores)
        self._observe(flat.detach(), bins)
        if self.smoothed is None:
            return features
        on = lambda stats, key: stats[key].to(flat.device)  # noqa: E731
        calibrated = fds_calibrate(flat, bins, on(self.running, "mean"), on(self.running, "var"),
                                   on(self.smoothed, "mean"), on(self.smoothed, "var"), self.clip)
        known = on(self.running, "seen")[bins]  # a bin never seen has no statistics to calibrate from
        return torch.where(known[:, None], calibrated, flat).reshape(features.shape)

    def _observe(self, flat: torch.Tensor, bins: torch.Tensor) -> None:
        """Add the rows to this epoch's per-bin sums: (K, 1 + 2 D) count, sum, sum of squares."""
        values = flat.double()
        if self.running is not None:
            width = self.running["mean"].shape[1]
        elif self.epoch_sums is not None:
            width = (self.epoch_sums.shape[1] - 1) // 2
        else:
            width = values.shape[1]
        if values.shape[1] != width:
            raise ValueError(f"fds: the features entering the head changed width, from {width} to {values.shape[1]}")
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
        count, seen = sums[:, :1].clamp_min(1), sums[:, 0] > 0
        mean = sums[:, 1:1 + width] / count
        var = (sums[:, 1 + width:] / count - mean**2).clamp_min(0)
        if self.running is not None:  # fold in with momentum where both have seen the bin
            old, m = self.running, self.momentum
            both, new_only = (seen & old["seen"])[:, None], (seen & ~old["seen"])[:, None]
            mean = torch.where(both, m * old["mean"] + (1 - m) * mean, torch.where(new_only, mean, old["mean"]))
            var = torch.where(both, m * old["var"] + (1 - m) * var, torch.where(new_only, var, old["var"]))
            seen = seen | old["seen"]
        self.running = {"mean": mean, "var": var, "seen": seen}
        self.smoothed = {"mean": smooth_bins(mean, self.window, "reflect"),
                         "var": smooth_bins(var, self.window, "reflect")}
        self.epoch_sums = None

    def get_extra_state(self) -> dict:
        return {"running": self.running, "smoothed": self.smoothed, "epoch_sums": self.epoch_sums}

    def set_extra_state(self, state: dict) -> None:
        self.running, self.smoothed, self.epoch_sums = state["running"], state["smoothed"], state["epoch_sums"]


class RankSim(Peer):
    """RankSim (Gong, Mori and Tung, "RankSim: Ranking Similarity Regularization for Deep
    Imbalanced Regression", ICML 2022): ``weight * ranksim_loss`` on the features FLSA
    aligns (the head's input), over one row per distinct label in the batch. Defaults:
    ``interpolation`` (lambda) 2 and ``weight`` (gamma) 100, the setting the paper reports
    for its image benchmarks.
    """

    name = "ranksim"
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

    name = "cmixup"

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
    Gamma(alpha) draws."""
    gammas = torch._standard_gamma(torch.full((2,), alpha, dtype=torch.float64), generator=generator)
    return float(gammas[0] / gammas.sum())


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

    name = "bmse"
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


PEERS: dict[str, type[Peer]] = {cls.name: cls for cls in (LDS, FDS, RankSim, CMixup, BalancedMSE)}


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
