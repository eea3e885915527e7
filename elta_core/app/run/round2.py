"""Round 2 (``--apds``): APDS's grid search on the calibration set, pseudo-labels for the
unlabelled pool, and one self-training round from round 1's weights
(:class:`~elta_core.adapters.torch.SelfTraining`)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from elta_core.adapters.torch import ELTAWrapper, SelfTraining
from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch.data import ImageLabelDataset, image_files
from elta_core.adapters.torch.loop import BASE_LR, make_optimizer
from elta_core.adapters.torch.modules import device_of
from elta_core.app import recipe
from elta_core.app.config import PseudoLabelConfig, TrainConfig
from elta_core.app.options import arguments_for
from elta_core.app.run.directory import CHECKPOINT_KEY, run_checkpoints
from elta_core.app.run.model import RunConfig, optimizer_class
from elta_core.app.run.reports import csv_text
from elta_core.app.run.resources import loader_options, shows_progress, write_on_main
from elta_core.data.labels import LabelTable, load_labels
from elta_core.io import atomic_write_text
from elta_core.run_state import RunManifest


def round2_lr(settings: TrainConfig) -> float:
    """Round 2's learning rate: ``--round2-lr``; else round 1's with
    ``--round2-resume-optimizer``, or round 1's over
    :data:`~elta_core.app.recipe.ROUND2_LR_DIVISOR` for a fresh optimizer."""
    if settings.round2_lr is not None:
        return settings.round2_lr
    return settings.lr if settings.round2_resume_optimizer else settings.lr / recipe.ROUND2_LR_DIVISOR


def round2_optimizer(settings: TrainConfig, round1: dict):
    """Round 2's optimizer at :func:`round2_lr`: round 1's, state included
    (``--round2-resume-optimizer``, as the authors resume), else a fresh one."""
    kind = optimizer_class(settings.optimizer)
    if not settings.round2_resume_optimizer:
        return lambda parameters: make_optimizer(kind, parameters, lr=round2_lr(settings))
    saved = round1.get("round2_optimizer") or round1["optimizer"]

    def resumed(parameters):
        optimizer = make_optimizer(kind, parameters, lr=settings.lr)
        optimizer.load_state_dict(copy.deepcopy(saved))
        if settings.round2_lr is not None:  # load_state_dict brought round 1's rate (and schedule base) back
            for group in optimizer.param_groups:
                group["lr"] = group[BASE_LR] = settings.round2_lr
        return optimizer

    return resumed


def train_round2(settings: TrainConfig, wrapper: ELTAWrapper, model: torch.nn.Module, pool, train_data,
                 calibration: tuple, round1: dict, config: RunConfig, manifest: RunManifest) -> None:
    """``--apds``: one self-training round from the current weights (round 1: the last or
    the best epoch). The final checkpoint holds the round-2 model, and the round-1
    training state to resume from."""
    out = manifest.folder
    trainer = SelfTraining(
        wrapper, out / "self_training", **arguments_for(settings, "self_training"),
        max_pseudo_labels=None if settings.max_pseudo_labels == "none" else settings.max_pseudo_labels,
        optimizer=round2_optimizer(settings, round1), progress=shows_progress(settings),
        loader_kwargs=loader_options(settings.workers, device_of(model), settings.threads),
        # the resolved rate: a round 2 trained under another default is not reused
        tag={"lr": settings.lr, "optimizer": settings.optimizer, "resume_optimizer": settings.round2_resume_optimizer,
             "select_best": settings.select_best, "round2_lr": round2_lr(settings)},
    )
    calibration, calibrated_on = calibration
    if settings.calibration:
        calibration_table = load_labels(settings.calibration, settings.calibration_format or settings.format, image_root=settings.images)
        calibration = ImageLabelDataset(calibration_table, config.transform(False), skip_unreadable=settings.skip_unreadable)
        calibrated_on = f"--calibration {settings.calibration}"
    summary = trainer.run(train_data, calibration, pool, round1="current")
    round2_rows = [{"epoch": round1["epoch"] + k + 1, **row, "round": 2}
                   for k, row in enumerate(trainer.epochs_log.get(2, []))]
    write_on_main(atomic_write_text, out / "metrics.csv",
                   csv_text([{**row, "round": 1} for row in round1.get("history", [])] + round2_rows))
    if ddp.is_main():
        grid = summary["grid"]
        print(f"APDS: beta* {grid['beta']:g}, t* {grid['threshold']:g}, {summary['num_kept']} pseudo-labels kept of "
              f"{summary['num_selected']} selected; calibrated on {calibrated_on}; thresholds: {grid['thresholds_from']}")
    resume = {k: v for k, v in round1.items() if k != "round2_optimizer"}
    run_checkpoints(manifest).save("checkpoint", {"model": model.state_dict(), "epoch": round1["epoch"],
                                                  "config": round1["config"], "round": 2, "resume": resume},
                                   manifest.stage_key("checkpoint", CHECKPOINT_KEY))


def unlabelled_pool(settings: TrainConfig | PseudoLabelConfig, table: LabelTable, config: RunConfig) -> ImageLabelDataset:
    if Path(settings.unlabelled).is_dir():
        files = image_files(settings.unlabelled)
        if not files:
            raise ValueError(f"unlabelled: no images in {settings.unlabelled} (looked for .jpg, .png, ... recursively)")
        pool_table = LabelTable(files, np.zeros(len(files)), None, table.bin_values, table.scale, source=settings.unlabelled)
    else:
        pool_table = load_labels(settings.unlabelled, settings.unlabelled_format or settings.format, image_root=settings.images)
    return ImageLabelDataset(pool_table, config.transform(False), labels=False, skip_unreadable=settings.skip_unreadable)
