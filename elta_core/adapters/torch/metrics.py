"""The metrics of :func:`elta_core.metrics.evaluate` as a torchmetrics ``Metric``, for
Lightning and other torchmetrics users: ``update`` per batch, ``compute`` at the end
(synchronised across DDP ranks by torchmetrics), equal to the whole-set functions."""

from __future__ import annotations

import warnings

from typing import Any

import torch

from elta_core import metrics
from elta_core.optional import require

torchmetrics = require("torchmetrics", "lightning")
METRIC_KEYS = tuple(metrics.evaluate([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]))  # what evaluate returns, in its order


class AestheticsMetrics(torchmetrics.Metric):
    """P, S, accuracy, MAE/MSE overall and per segment (L, M, H) of predicted scores.

    Args:
        threshold: the accuracy's class boundary (5 on AVA's 1..10).
        bin_values: rating values of the levels, for (N, C) distribution inputs.
        key: which of :func:`elta_core.metrics.evaluate`'s results ``compute`` returns;
            None returns them all as a dict of tensors.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, threshold: float = 5.0, *, bin_values: Any = None, key: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if key is not None and key not in METRIC_KEYS:
            raise ValueError(f"key: expected None or one of {', '.join(METRIC_KEYS)}, got {key!r}")
        self.threshold, self.bin_values, self.key = threshold, bin_values, key
        self._warned_small_batch = False
        self.add_state("pred", default=[], dist_reduce_fx="cat")
        self.add_state("true", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, true: torch.Tensor) -> None:
        accumulator = metrics.MetricAccumulator(self.threshold, bin_values=self.bin_values)
        accumulator.update(pred.detach(), true.detach())  # the core's checks and score conversion
        state = accumulator.state_dict()
        self.pred.append(torch.from_numpy(state["pred"]).to(self.device))
        self.true.append(torch.from_numpy(state["true"]).to(self.device))

    def forward(self, pred: torch.Tensor, true: torch.Tensor):
        """The batch's metrics, its samples added to the epoch's. A batch of fewer than 3
        samples (a last batch) has no segments and no correlation of its own: its value is
        NaN, said once, and its samples still count in :meth:`compute`."""
        if len(pred) >= metrics.MIN_SAMPLES:
            return super().forward(pred, true)
        self.update(pred, true)
        if not self._warned_small_batch:
            self._warned_small_batch = True
            warnings.warn(f"AestheticsMetrics: a batch of {len(pred)} sample(s) has no metrics of its own (they need "
                          f"{metrics.MIN_SAMPLES}); its value is NaN, and its samples count in compute()", stacklevel=2)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return nan if self.key is not None else {name: nan.clone() for name in METRIC_KEYS}

    def compute(self):
        pred = torchmetrics.utilities.dim_zero_cat(self.pred)
        true = torchmetrics.utilities.dim_zero_cat(self.true)
        result = metrics.evaluate(pred.cpu().numpy(), true.cpu().numpy(), self.threshold)
        if self.key is not None:
            return torch.tensor(result[self.key], dtype=torch.float64)
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in result.items()}
