"""RankSim: ranking similarity regularisation (Gong et al., ICML 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from elta_core import _checks
from elta_core.adapters.torch.peers.base import Peer


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
