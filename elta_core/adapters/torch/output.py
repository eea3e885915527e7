"""What a training call of ``ELTAWrapper`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from elta_core import tfa as tfa_core


class EvaluationOutput(NamedTuple):
    """What ``wrapper(x, labels=y)`` returns in eval mode (as Hugging Face's Trainer calls
    it to evaluate and predict): the task loss on the model's own output (no TFA, no
    FLSA) and that output. A tuple whose first item is the loss, as the Trainer reads it."""

    loss: torch.Tensor
    logits: torch.Tensor


@dataclass
class ELTAOutput:
    """What a training call ``wrapper(x, y)`` returns.

    Attributes:
        predictions: the model's output for the B + K rows (K mixed by TFA).
        labels: the labels extended by TFA, (B + K,) scores or (B + K, C) distributions.
        loss: ``task_loss + flsa_weight * flsa_loss``, what to backpropagate.
        task_loss: EMD (distribution labels), MSE (scalar labels) or the user's loss.
        flsa_loss: the FLSA term before its weight (0 when FLSA is off).
        pairs: the TFA pairs drawn (``None`` when TFA is off).
        features: the features FLSA aligned (``None`` when FLSA is off).
        peer_losses: the peers' regularisers, by name, already weighted and in ``loss``
            (RankSim's, say).
    """

    predictions: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor
    task_loss: torch.Tensor
    flsa_loss: torch.Tensor
    pairs: tfa_core.Pairs | None = None
    features: torch.Tensor | None = None
    peer_losses: dict[str, torch.Tensor] = field(default_factory=dict)

    # Hugging Face's Trainer reads outputs as a mapping or a tuple whose first item is the loss.
    def to_tuple(self) -> tuple:
        """``(loss, predictions, labels, task_loss, flsa_loss)``: the loss first, as Hugging
        Face's ``ModelOutput`` puts it."""
        return (self.loss, self.predictions, self.labels, self.task_loss, self.flsa_loss)

    def keys(self) -> list[str]:
        return ["loss", "predictions", "labels", "task_loss", "flsa_loss"]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys() + ["pairs", "features", "peer_losses", "logits"]:
                raise KeyError(key)
            return self.predictions if key == "logits" else getattr(self, key)
        return self.to_tuple()[key]
