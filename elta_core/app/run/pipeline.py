"""``elta train``: the steps of a run, in order. The labels are read and the recipe
resolved, the arguments checked, the run directory opened (or resumed) and locked, the
splits chosen, the model built and wrapped, round 1 trained (or taken from another run),
the best epoch restored, round 2 trained with ``--apds``, and the final model tested."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from elta_core.adapters.torch import ELTAWrapper
from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch import peers
from elta_core.adapters.torch.data import ImageLabelDataset
from elta_core.adapters.torch.loop import make_optimizer
from elta_core.adapters.torch.modules import find_module
from elta_core.app import recipe
from elta_core.app.config import TrainConfig
from elta_core.app.options import arguments_for, peer_setting_values
from elta_core.app.models import check_weights_source
from elta_core.app.run.adopt import adopt_round1
from elta_core.app.run.directory import BEST, CHECKPOINT, open_run_everywhere, run_lock
from elta_core.app.run.model import RunConfig, ScaledScoreMSE, optimizer_class, score_scale_of
from elta_core.app.run.reports import evaluate_model, json_ready, write_predictions
from elta_core.app.run.resources import device_named, loader_options, shows_progress, torch_threads, write_on_main
from elta_core.app.run.round1 import load_best, train_round1
from elta_core.app.run.round2 import train_round2, unlabelled_pool
from elta_core.app.run.splits import DataSplits, check_choices_not_on_test, check_splits, data_splits, write_split
from elta_core.data.labels import load_labels
from elta_core.io import atomic_write_json
from elta_core.run_state import StaleStateError


def _check_train_args(settings: TrainConfig) -> None:
    if settings.lr is None or not (math.isfinite(settings.lr) and settings.lr > 0):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {settings.lr}")
    if settings.round2_lr is not None and not (math.isfinite(settings.round2_lr) and settings.round2_lr > 0):
        raise ValueError(f"round2_lr: expected a finite learning rate > 0, got {settings.round2_lr}")
    check_weights_source(settings.weights, settings.pretrained)
    if settings.head == "sigmoid" and settings.apds:
        raise ValueError("apds: needs a distribution head (--head linear or emd-mlp); --head sigmoid predicts one "
                         "score per image, which APDS cannot sharpen")
    named = list(getattr(settings, "peers", None) or [])
    changing = peers.task_loss_changers([peers.PEERS[name] for name in named])  # before the run directory is touched
    if changing and settings.head == "sigmoid":
        raise ValueError(f"peers: {changing[0]} changes the task loss, and --head sigmoid has its own (MSE on the "
                         f"labels' scale); use --head linear or emd-mlp with {changing[0]}")
    for entry in settings.peer_settings:
        if entry.partition(".")[0] not in named:
            raise ValueError(f"peer_settings: {entry} sets {entry.partition('.')[0]}, which --peers does not name")
    _peers(settings, None)  # a setting a peer does not take, or a value it refuses, before the run directory
    if "bmse" in named and ddp.launched_by_torchrun():
        raise ValueError("peers: bmse learns its noise scale outside the DDP model, so the processes would drift "
                         "apart; run bmse in one process")
    if not (math.isfinite(settings.val_fraction) and 0 < settings.val_fraction < 1):
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {settings.val_fraction}")
    if settings.apds and not settings.unlabelled:
        raise ValueError("unlabelled: --apds needs --unlabelled (a folder of images or a label file)")
    if settings.resize is not None and settings.resize < settings.image_size:
        raise ValueError(f"resize: expected a side >= --image-size ({settings.image_size}), got {settings.resize}")


def _datasets(settings: TrainConfig, splits: DataSplits, config: RunConfig) -> tuple[ImageLabelDataset, ...]:
    make = lambda table, train: None if table is None else ImageLabelDataset(  # noqa: E731
        table, config.transform(train), skip_unreadable=settings.skip_unreadable, seed=settings.seed if train else None)
    return (make(splits.train, True), make(splits.validation, False), make(splits.test, False),
            make(splits.calibration, False))


def train(settings: TrainConfig) -> dict[str, Any]:
    """``elta train``: returns the test metrics of the final model (the best epoch's with
    ``--select-best``, the round-2 model with ``--apds``). Under ``torchrun`` every process
    runs this: the model is wrapped in DistributedDataParallel, FLSA sees the global batch
    (``--flsa-scope global``), and rank 0 writes every file."""
    with torch_threads(settings), contextlib.ExitStack() as held:
        return _train(settings, hold_out=lambda: held.enter_context(run_lock(settings.out)))


def _train(settings: TrainConfig, hold_out: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    settings = recipe.resolve(settings, table.distributions is not None)
    _check_train_args(settings)
    device = ddp.init_from_environment(device_named(settings.device))
    hold_out()  # --out is this run's alone from here (the arguments were checked: a refused run leaves no folder)
    manifest = open_run_everywhere(settings, list(table.images))
    out = Path(settings.out)
    torch.manual_seed(settings.seed)
    splits = data_splits(settings, table)
    write_on_main(write_split, out, splits)
    config = RunConfig(settings.backbone, len(table.bin_values), table.bin_values.tolist(), list(table.scale),
                       settings.image_size, "", settings.head, settings.resize, settings.eval_transform == "crop")
    model, config.head, skipped = config.build(settings.weights, settings.pretrained)
    model.to(device, memory_format=torch.channels_last if settings.channels_last else torch.preserve_format)
    if settings.align_at is not None:
        find_module(model, settings.align_at, "align_at")  # the model's own names, before DDP or compile prefix them
    trained, head = model, config.head
    if ddp.is_distributed():
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        head = f"module.{head}"
    if settings.compile:
        trained, head = torch.compile(trained), f"_orig_mod.{head}"
    align_at = None if settings.align_at is None else head[:len(head) - len(config.head)] + settings.align_at
    wrapper = ELTAWrapper(
        trained, head, **arguments_for(settings, "step"), align_at=align_at,
        bin_values=config.bin_values, score_scale=score_scale_of(table), seed=settings.seed + ddp.rank(),
        flsa_scope=settings.flsa_scope if ddp.is_distributed() else "local",
        task_loss=ScaledScoreMSE(table.scale[1], config.bin_values) if settings.head == "sigmoid" else None,
        peers=_peers(settings, splits.train.scores),
    )
    train_data, val_data, test_data, held_out = _datasets(settings, splits, config)
    pool = unlabelled_pool(settings, table, config) if settings.apds else None  # its errors before round 1
    check_splits(table, splits)
    check_choices_not_on_test(settings, splits)
    optimizer = make_optimizer(optimizer_class(settings.optimizer), wrapper.parameters(), lr=settings.lr)
    if settings.round1_from:
        adopt_round1(settings, manifest, splits)
        settings = settings.replace(resume=True)  # round 1 resumes from the checkpoint taken
    round1 = train_round1(settings, wrapper, model, train_data, val_data, optimizer, config, manifest)
    if round1 is None:
        return {}
    evaluated, best = CHECKPOINT, round1.get("best")
    if settings.select_best != "none":
        best_state = load_best(manifest, best, device)
        model.load_state_dict(best_state["model"])
        evaluated = BEST
        if settings.round2_resume_optimizer:
            if settings.apds and "optimizer" not in best_state:  # never the last epoch's state on the best weights
                raise StaleStateError(f"round2_resume_optimizer: {manifest.folder / BEST} keeps no optimizer state "
                                      "(written by an older elta), so round 2 cannot resume the best epoch's; train "
                                      "round 1 again, or leave out --round2-resume-optimizer")
            round1 = {**round1, "round2_optimizer": best_state.get("optimizer")}  # (no round 2 reads it without --apds)
    if settings.apds:
        calibration = next((data, name) for data, name in (
            (held_out, f"{len(held_out or ())} training images held out for it"), (val_data, "the validation set"),
            (test_data, "the test split (--calibrate-on test)")) if data is not None)
        train_round2(settings, wrapper, model, pool, train_data, calibration, round1, config, manifest)
        evaluated = CHECKPOINT
    evaluation = evaluate_model(wrapper, test_data, splits.test, settings.batch_size, shows_progress(settings), desc="test",
                                loader_kwargs=loader_options(settings.workers, device, settings.threads))
    result: dict[str, Any] = dict(evaluation.metrics)
    result["skipped_images"] = float(sum(len(d.skipped) for d in (train_data, val_data, test_data) if d is not None))
    result["checkpoint"] = evaluated
    result["world_size"] = ddp.world_size()
    if best:
        result.update(best_epoch=best["epoch"], **{f"best_val_{settings.select_best}": best["value"]})
    if settings.evaluate_on != "test":
        result["evaluated_on"] = settings.evaluate_on
    write_on_main(write_predictions, evaluation, out, f"{settings.backbone}, {settings.evaluate_on} split")
    write_on_main(atomic_write_json, out / "metrics.json", json_ready(result))
    if skipped and ddp.is_main():
        print(f"weights: {len(skipped)} head tensors not loaded (a new head), e.g. {skipped[0]}")
    return result


def _peers(settings: TrainConfig, train_labels: Any) -> list:
    """The plug-ins named by ``--peers``, with their papers' defaults where
    ``--peer-settings`` does not set them; LDS and FDS bin ``train_labels`` (the training
    split's scores)."""
    values = peer_setting_values(settings.peer_settings)
    return [peers.make_peer(name, train_labels, values.get(name)) for name in settings.peers]
