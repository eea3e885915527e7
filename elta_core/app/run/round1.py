"""Round 1: the epochs of a run, validated each epoch where there is a validation set, the
best epoch kept as ``best.pt`` (``--select-best``), checkpointed with every random
generator's state so that ``--resume`` continues bit-identically."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from elta_core.adapters.torch import ELTAWrapper, fit
from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch import rng
from elta_core.adapters.torch.checkpoints import save_and_record
from elta_core.adapters.torch.data import ImageLabelDataset
from elta_core.adapters.torch.loop import training_loader
from elta_core.adapters.torch.modules import device_of
from elta_core.app.config import TrainConfig
from elta_core.app.run.directory import BEST, CHECKPOINT, CHECKPOINT_KEY
from elta_core.app.run.model import RunConfig, load_checkpoint_file
from elta_core.app.run.reports import csv_text, evaluate_model
from elta_core.app.run.resources import loader_options, shows_progress, write_on_main
from elta_core.io import atomic_write_text
from elta_core.run_state import RunManifest
from elta_core.training_options import lr_factor


def train_round1(settings: TrainConfig, wrapper: ELTAWrapper, model: torch.nn.Module, data: ImageLabelDataset,
                 validation: ImageLabelDataset | None, optimizer, config: RunConfig,
                 manifest: RunManifest) -> dict | None:
    """Train (or resume) the epochs of ``model`` (``wrapper.model`` is it, or its DDP
    wrapper), validating each when there is a validation set. Every ``--checkpoint-every``-th
    epoch, the last and each new best are checkpointed with the optimizer and every random
    generator's state (each rank's, under DDP), so that a resumed run, which trains the
    epochs after the checkpoint again, equals the uninterrupted one. The best epoch
    (``--select-best``) is saved to ``best.pt`` before ``checkpoint.pt`` names it. Returns
    the last epoch's state (a copy: the state to resume from), None when stopped early.
    After an APDS round the checkpoint holds the round-2 model and, under ``"resume"``,
    this state."""
    path = manifest.folder / CHECKPOINT
    if len(data) < 2 * ddp.world_size():
        per_process = f" (2 per process, {ddp.world_size()} processes)" if ddp.is_distributed() else ""
        raise ValueError(f"labels: {len(data)} training image(s) after the split; at least {2 * ddp.world_size()} are "
                         f"needed to train{per_process}")
    order = torch.Generator().manual_seed(settings.seed)
    loader = training_loader(data, settings.batch_size, seed=settings.seed, generator=order,
                             **loader_options(settings.workers, device_of(model), settings.threads))
    generators = [wrapper.generator, order]
    key = manifest.stage_key("checkpoint", CHECKPOINT_KEY)
    first_epoch, state, history, best = 0, None, [], None
    last_epoch = min(settings.epochs, settings.stop_after_epoch or settings.epochs)
    if settings.resume and manifest.reusable("checkpoint", path, key):
        state = load_checkpoint_file(path, device_of(model))
        state = state.get("resume", state)
        model.load_state_dict(state["model"])
        wrapper.peers.load_state_dict(state.get("peers", {}))
        optimizer.load_state_dict(state["optimizer"])
        per_rank = state.get("rng_ranks") or [state["rng"]]
        rng.restore(per_rank[ddp.rank()] if len(per_rank) == ddp.world_size() else state["rng"], generators)
        first_epoch, history, best = int(state["epoch"]), list(state.get("history", [])), state.get("best")

        if ddp.is_main():
            print(f"resuming from {path} after epoch {first_epoch}")
    saved = first_epoch
    for epoch in range(first_epoch, settings.epochs):
        started = time.perf_counter()
        terms: list[dict[str, float]] = []
        try:
            losses = fit(wrapper, loader, optimizer, epochs=1, progress=shows_progress(settings),
                         desc=f"epoch {epoch + 1}/{settings.epochs}", first_epoch=epoch, precision=settings.precision,
                         epoch_terms=terms, lr_schedule=lr_factor(settings.lr_schedule, settings.epochs))
        except FloatingPointError as error:
            kept = f"the last good checkpoint (epoch {saved}) is kept at {path}" if saved else "no checkpoint was written"
            raise FloatingPointError(f"{error}; {kept}") from None
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise FloatingPointError(f"epoch {epoch + 1}/{settings.epochs}: the weights became NaN or Inf in the last "
                                     f"step; the last good checkpoint (epoch {saved}) is kept at {path}")
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": losses[-1], **terms[-1]}
        if validation is not None:
            scores = evaluate_model(wrapper, validation, validation.table, settings.batch_size, shows_progress(settings),
                                    desc="validate", loader_kwargs=loader_options(settings.workers, device_of(model), settings.threads)).metrics
            row.update({f"val_{name}": value for name, value in scores.items() if name not in ("num_images", "tail_images")})
        row["seconds"] = round(time.perf_counter() - started, 3)
        history.append(row)
        previous_best = best
        best = _keep_best(settings, row, best, model, optimizer, config, manifest)
        # a new best.pt is checkpointed with it: the run it resumes from must name that epoch
        if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 >= last_epoch or best is not previous_best:
            snapshots = ddp.gather_objects(rng.snapshot(generators))
            state = {"model": model.state_dict(), "peers": wrapper.peers.state_dict(),
                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "config": config.__dict__, "loss": losses[-1], "rng": snapshots[0], "rng_ranks": snapshots,
                     "history": history, "best": best}
            save_and_record(state, path, manifest, "checkpoint", key)
            saved = epoch + 1
        write_on_main(atomic_write_text, manifest.folder / "metrics.csv", csv_text(history))
        if settings.stop_after_epoch and epoch + 1 >= settings.stop_after_epoch:
            if ddp.is_main():
                print(f"stopped after epoch {epoch + 1} (--stop-after-epoch); rerun with --resume to continue")
            return None
    return copy.deepcopy(state)


def _keep_best(settings: TrainConfig, row: dict[str, Any], best: dict | None, model, optimizer, config: RunConfig,
               manifest: RunManifest) -> dict | None:
    """With ``--select-best``: save this epoch to ``best.pt`` when its validation metric is
    the best so far (a NaN metric, e.g. from constant predictions, never is)."""
    if settings.select_best == "none":
        return best
    value = row[f"val_{settings.select_best}"]
    if not math.isfinite(value) or (best is not None and value <= best["value"]):
        return best
    best = {"epoch": row["epoch"], "value": value, "metric": settings.select_best}
    state = {"model": model.state_dict(), "epoch": row["epoch"], "config": config.__dict__, "validation": row}
    if settings.round2_resume_optimizer:  # also without --apds: an APDS run may take this round 1 (--round1-from)
        state["optimizer"] = optimizer.state_dict()
    save_and_record(state, manifest.folder / BEST, manifest, "best", manifest.stage_key("best", CHECKPOINT_KEY))
    return best


def load_best(manifest: RunManifest, best: dict | None, device: torch.device) -> dict:
    """``best.pt``, checked against the epoch the last checkpoint names as the best."""
    path = manifest.folder / BEST
    if best is None:
        raise ValueError("select-best: no epoch had a finite validation score (constant predictions?); pass "
                         "--select-best none to keep the last epoch")
    if not manifest.reusable("best", path, manifest.stage_key("best", CHECKPOINT_KEY)):
        raise ValueError(f"select-best: {path} is missing or does not match the run; delete {manifest.folder} "
                         "and train again")
    state = load_checkpoint_file(path, device)
    if state.get("epoch") != best["epoch"]:
        raise ValueError(f"select-best: {path} holds epoch {state.get('epoch')}, but the run's best epoch is "
                         f"{best['epoch']}; delete {manifest.folder} and train again")
    return state
