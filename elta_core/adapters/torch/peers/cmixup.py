"""C-Mixup: mixup with label-near partners (Yao et al., NeurIPS 2022)."""

from __future__ import annotations

import torch

from elta_core import _checks
from elta_core.adapters.torch.peers.base import Peer


def cmixup_probabilities(scores: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """C-Mixup (Yao et al., NeurIPS 2022; its sampling rule): ``P[i, j]``, the probability that sample
    ``i`` is mixed with ``j``, proportional to ``exp(-(y_i - y_j)^2 / (2 bandwidth^2))``
    over the batch (``j = i`` included, as in the paper); each row sums to 1."""
    scores = scores.detach().double()
    distance = (scores[:, None] - scores[None, :]) / bandwidth  # divided first: a tiny bandwidth overflows to inf
    return torch.softmax(-0.5 * distance**2, dim=1)

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
