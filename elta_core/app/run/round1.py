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
from elta_core.adapters.torch.data import ImageLabelDataset
from elta_core.adapters.torch.loop import training_loader
from elta_core.adapters.torch.modules import device_of
from elta_core.app.config import TrainConfig
from elta_core.app.run.directory import CHECKPOINT_KEY, run_checkpoints
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
    wrapper) in one :func:`~elta_core.adapters.torch.fit`, whose ``epoch_end`` is an
    :class:`EpochEnd`: it validates each epoch when there is a validation set, keeps the
    best (``--select-best``: ``best.pt``, saved before ``checkpoint.pt`` names it), and
    every ``--checkpoint-every``-th epoch, the last and each new best checkpoints the
    model with the optimizer, fp16's gradient scaler and every random generator's state
    (each rank's, under DDP), so that a resumed run, which trains the epochs after the
    checkpoint again, equals the uninterrupted one. Returns the last epoch's state (a
    copy: the state to resume from), None when stopped early. After an APDS round the
    checkpoint holds the round-2 model and, under ``"resume"``, this state."""
    if len(data) < 2 * ddp.world_size():
        per_process = f" (2 per process, {ddp.world_size()} processes)" if ddp.is_distributed() else ""
        raise ValueError(f"labels: {len(data)} training image(s) after the split; at least {2 * ddp.world_size()} are "
                         f"needed to train{per_process}")
    order = torch.Generator().manual_seed(settings.seed)
    loader = training_loader(data, settings.batch_size, seed=settings.seed, generator=order,
                             **loader_options(settings.workers, device_of(model), settings.threads))
    scaler = torch.amp.GradScaler(device_of(model).type, enabled=settings.precision == "fp16")
    epoch_end = EpochEnd(settings, wrapper, model, validation, optimizer, scaler, config, manifest, [wrapper.generator, order])
    first_epoch = epoch_end.resume() if settings.resume else 0
    if first_epoch < settings.epochs:
        try:
            fit(wrapper, loader, optimizer, epochs=settings.epochs - first_epoch, first_epoch=first_epoch,
                progress=shows_progress(settings), desc="train", precision=settings.precision,
                epoch_terms=epoch_end.terms, lr_schedule=lr_factor(settings.lr_schedule, settings.epochs),
                epoch_end=epoch_end, grad_scaler=scaler)
        except FloatingPointError as error:
            saved = epoch_end.saved
            kept = f"the last good checkpoint (epoch {saved}) is kept at {epoch_end.path}" if saved else \
                "no checkpoint was written"
            raise FloatingPointError(f"{error}; {kept}") from None
    if epoch_end.stopped:
        return None
    return copy.deepcopy(epoch_end.state)


class EpochEnd:
    """What round 1 does after each epoch (:func:`train_round1`); ``resume()`` loads the
    run's checkpoint into the model, the optimizer, the scaler and the generators."""

    def __init__(self, settings: TrainConfig, wrapper: ELTAWrapper, model: torch.nn.Module,
                 validation: ImageLabelDataset | None, optimizer, scaler: torch.amp.GradScaler, config: RunConfig,
                 manifest: RunManifest, generators: list):
        self.settings, self.wrapper, self.model, self.validation = settings, wrapper, model, validation
        self.optimizer, self.scaler, self.config, self.manifest = optimizer, scaler, config, manifest
        self.checkpoints = run_checkpoints(manifest, lambda: generators)
        self.path, self.key = self.checkpoints.path("checkpoint"), manifest.stage_key("checkpoint", CHECKPOINT_KEY)
        self.state: dict | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict | None = None
        self.terms: list[dict[str, float]] = []
        self.saved, self.stopped = 0, False
        self.last_epoch = min(settings.epochs, settings.stop_after_epoch or settings.epochs)
        self.started = time.perf_counter()

    def resume(self) -> int:
        """The epochs the run's checkpoint has trained (0 without one), its state loaded."""
        if not self.checkpoints.current("checkpoint", self.key):
            return 0
        state = load_checkpoint_file(self.path, device_of(self.model))
        state = state.get("resume", state)
        self.model.load_state_dict(state["model"])
        self.wrapper.peers.load_state_dict(state.get("peers", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.checkpoints.restore_generators(state)
        self.state, self.history, self.best = state, list(state.get("history", [])), state.get("best")
        self.saved = int(state["epoch"])
        if ddp.is_main():
            print(f"resuming from {self.path} after epoch {self.saved}")
        return self.saved

    def __call__(self, epoch: int, loss: float) -> bool:
        settings, model = self.settings, self.model
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise FloatingPointError(f"epoch {epoch}/{settings.epochs}: the weights became NaN or Inf in the last "
                                     "step")  # train_round1 names the last good checkpoint
        row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": loss,
                               **self.terms[-1]}
        if self.validation is not None:
            scores = evaluate_model(self.wrapper, self.validation, self.validation.table, settings.batch_size,
                                    shows_progress(settings), desc="validate",
                                    loader_kwargs=loader_options(settings.workers, device_of(model),
                                                                 settings.threads)).metrics
            row.update({f"val_{name}": value for name, value in scores.items()
                        if name not in ("num_images", "tail_images")})
        row["seconds"] = round(time.perf_counter() - self.started, 3)
        self.history.append(row)
        previous_best = self.best
        self.best = self._keep_best(row)
        # a new best.pt is checkpointed with it: the run it resumes from must name that epoch
        if epoch % settings.checkpoint_every == 0 or epoch >= self.last_epoch or self.best is not previous_best:
            self.state = {"model": model.state_dict(), "peers": self.wrapper.peers.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "grad_scaler": self.scaler.state_dict(),
                          "epoch": epoch, "config": self.config.__dict__, "loss": loss,
                          **self.checkpoints.generator_state(), "history": self.history, "best": self.best}
            self.checkpoints.save("checkpoint", self.state, self.key)
            self.saved = epoch
        write_on_main(atomic_write_text, self.manifest.folder / "metrics.csv", csv_text(self.history))
        self.started = time.perf_counter()
        if settings.stop_after_epoch and epoch >= settings.stop_after_epoch:
            if ddp.is_main():
                print(f"stopped after epoch {epoch} (--stop-after-epoch); rerun with --resume to continue")
            self.stopped = True
        return self.stopped

    def _keep_best(self, row: dict[str, Any]) -> dict | None:
        """With ``--select-best``: save this epoch to ``best.pt`` when its validation metric is
        the best so far (a NaN metric, e.g. from constant predictions, never is)."""
        metric, best = self.settings.select_best, self.best
        if metric == "none":
            return best
        value = row[f"val_{metric}"]
        if not math.isfinite(value) or (best is not None and value <= best["value"]):
            return best
        state = {"model": self.model.state_dict(), "epoch": row["epoch"], "config": self.config.__dict__,
                 "validation": row}
        if self.settings.round2_resume_optimizer:  # also without --apds: --round1-from may take this round 1
            state["optimizer"] = self.optimizer.state_dict()
        self.checkpoints.save("best", state, self.manifest.stage_key("best", CHECKPOINT_KEY))
        return {"epoch": row["epoch"], "value": value, "metric": metric}


def load_best(manifest: RunManifest, best: dict | None, device: torch.device) -> dict:
    """``best.pt``, checked against the epoch the last checkpoint names as the best."""
    checkpoints = run_checkpoints(manifest)
    path = checkpoints.path("best")
    if best is None:
        raise ValueError("select-best: no epoch had a finite validation score (constant predictions?); pass "
                         "--select-best none to keep the last epoch")
    if not checkpoints.current("best", manifest.stage_key("best", CHECKPOINT_KEY)):
        raise ValueError(f"select-best: {path} is missing or does not match the run; delete {manifest.folder} "
                         "and train again")
    state = load_checkpoint_file(path, device)
    if state.get("epoch") != best["epoch"]:
        raise ValueError(f"select-best: {path} holds epoch {state.get('epoch')}, but the run's best epoch is "
                         f"{best['epoch']}; delete {manifest.folder} and train again")
    return state
