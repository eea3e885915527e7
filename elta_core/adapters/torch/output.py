"""What a training call of ``ELTAWrapper`` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from elta_core import tfa as tfa_core


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
    """

    predictions: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor
    task_loss: torch.Tensor
    flsa_loss: torch.Tensor
    pairs: tfa_core.Pairs | None = None
    features: torch.Tensor | None = None
