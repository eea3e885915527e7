"""FDS: feature distribution smoothing (Yang et al., "Delving into Deep Imbalanced
Regression", ICML 2021)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from elta_core.adapters.torch.peers.base import fraction
from elta_core.adapters.torch.peers.binning import Binned, smooth_bins


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

class FDS(Binned):
    """Feature distribution smoothing (Yang et al., ICML 2021), on the schedule of the
    authors' code: the features entering the head are recalibrated per label bin
    (:func:`fds_calibrate`) from their running mean and variance to those statistics
    smoothed across neighbouring bins, in training only.

    Each epoch's (calibrated) features are collected per bin (under DDP, summed over the
    ranks): by default, as the authors' code, in a pass of their own over the training
    set after the epoch's steps, in train mode without gradients, with the model as the
    epoch left it (``statistics="pass"``; ``fit`` runs it, costing one forward of the
    training set an epoch); ``statistics="steps"`` collects the training steps' features
    instead (no extra pass, the features of a model that changes during the epoch). At
    the epoch's end (:meth:`end_epoch`) the running statistics take the
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
        statistics: ``"pass"`` (the authors') or ``"steps"``: where the epoch's features
            come from.
    """

    stage = "head"

    def __init__(self, train_labels: Any, num_bins: int = 100, kernel_size: int = 5, sigma: float = 2.0,
                 momentum: float = 0.9, clip: tuple[float, float] = (0.1, 10.0), statistics: str = "pass"):
        super().__init__(train_labels, num_bins, kernel_size, sigma)
        if statistics not in ("pass", "steps"):
            raise ValueError(f"statistics: expected 'pass' or 'steps', got {statistics!r}")
        self.statistics, self._collecting = statistics, statistics == "steps"
        self.momentum = fraction(momentum, "momentum")
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
        if self._collecting:
            self._observe(flat.detach(), bins)
        return flat.reshape(features.shape)

    @property
    def feature_pass(self) -> bool:
        return self.statistics == "pass"

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        before, self._collecting = self._collecting, True
        try:
            yield
        finally:
            self._collecting = before

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
