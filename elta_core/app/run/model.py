"""The model of a run: what its checkpoint needs to rebuild the network and its evaluation
transform (:class:`RunConfig`), the sigmoid head's loss, the optimizer by name, and a
checkpoint loaded back as a ready :class:`~elta_core.adapters.torch.ELTAWrapper`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from elta_core import losses as core_losses
from elta_core.adapters.torch import ELTAWrapper
from elta_core.adapters.torch.checkpoints import load_file
from elta_core.adapters.torch.data import iaa_transforms
from elta_core.app.config import OPTIMIZERS
from elta_core.app.models import build_model
from elta_core.data.labels import LabelTable


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The torch optimizer ``--optimizer name`` names (:data:`~elta_core.app.config.OPTIMIZERS`)."""
    return getattr(torch.optim, OPTIMIZERS[name])


@dataclass
class RunConfig:
    """What a checkpoint needs to rebuild its model and its evaluation transform."""

    backbone: str
    num_bins: int
    bin_values: list[float]
    scale: list[float]
    image_size: int
    head: str  # the head module's name (where TFA mixes)
    head_type: str = "linear"
    resize: int | None = None
    eval_crop: bool = True

    def transform(self, train: bool):
        return iaa_transforms(train, self.image_size, self.resize, self.eval_crop)

    def build(self, weights: str | None = None, pretrained: str | None = None):
        return build_model(self.backbone, self.num_bins, self.head_type, weights, top=self.scale[1],
                           pretrained=pretrained)


class ScaledScoreMSE:
    """The sigmoid head's loss: MSE between scores divided by the scale's top, as the
    authors train on labels divided by 10; keeps the task loss and FLSA's weight in the
    paper's proportion."""

    def __init__(self, top: float, bin_values: list[float]):
        self.top, self.bin_values = float(top), bin_values

    def __call__(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return core_losses.task_loss(predictions, labels, "score", self.bin_values, validate=False) / self.top ** 2


def score_scale_of(table: LabelTable) -> float:
    low, high = table.scale
    return (high - low) / 9.0

def load_checkpoint_file(path: str | Path, device: torch.device) -> dict:
    """A checkpoint written by ``elta train``, or an error that names the file and what to do."""
    state = load_file(path, device, name="checkpoint",
                      what="it is damaged or not an elta checkpoint: restore it, or delete it and train again")
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"checkpoint: {path} was not written by elta train")
    return state


def load_checkpoint(path: str, device: torch.device) -> tuple[ELTAWrapper, RunConfig]:
    state = load_checkpoint_file(path, device)
    try:
        config = RunConfig(**state["config"])
    except TypeError:
        raise ValueError(f"checkpoint: {path} has an unknown configuration (another elta version?)") from None
    model, _, _ = config.build()
    model.load_state_dict(state["model"])
    model.to(device)
    scale = (config.scale[1] - config.scale[0]) / 9.0
    return ELTAWrapper(model, config.head, bin_values=config.bin_values, score_scale=scale).eval(), config


def check_rating_scale(config: RunConfig, table: LabelTable, checkpoint: str | Path) -> None:
    """Refuse labels on another rating scale than the checkpoint's: its predicted scores
    would be compared with scores they do not measure (a 10-level AVA model on PARA's 9
    half-steps of 1..5, say), or fail deep in the metrics naming neither file."""
    mine, theirs = [float(v) for v in config.bin_values], [float(v) for v in table.bin_values]
    if len(mine) != len(theirs) or any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(mine, theirs)):
        raise ValueError(f"labels: {table.source} rates on {len(theirs)} levels {theirs[0]:g}..{theirs[-1]:g}, and "
                         f"{checkpoint} predicts {len(mine)} levels {mine[0]:g}..{mine[-1]:g}; give labels on the "
                         "checkpoint's rating scale (--format, and --scale for csv), or train a model on this file")
