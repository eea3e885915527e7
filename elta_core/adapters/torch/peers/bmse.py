"""Balanced MSE, batch Monte-Carlo form (Ren et al., CVPR 2022)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elta_core import _checks
from elta_core.adapters.torch.peers.base import Peer


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
