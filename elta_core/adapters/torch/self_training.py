"""APDS self-training with torch (paper 3.5, Eq. 10).

Round 1 trains on the labelled set; the calibration set and the unlabelled pool are
predicted; the core's pseudo-label round (:mod:`elta_core.pseudo_labels`) picks (beta*, t*)
and the confident pool samples (by default at most as many as the labelled set, most
confident first); round 2 trains on ``L = L_s + L_u``. Every stage is saved in ``workdir``
(:class:`~elta_core.adapters.torch.checkpoints.Checkpointer`) and reused while it is current."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence, Union

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from elta_core import apds
from elta_core.adapters.torch.checkpoints import Checkpointer
from elta_core.adapters.torch.distributed import is_main, on_main
from elta_core.adapters.torch.loop import Precision, fit, make_optimizer, training_loader
from elta_core.adapters.torch.prediction import predict_dataset
from elta_core.adapters.torch.pseudo_labelled import PseudoLabelledDataset, dataset_fingerprint, is_score_label
from elta_core.adapters.torch.wrapper import ELTAWrapper
from elta_core.io import atomic_write_text
from elta_core.pseudo_labels import DEFAULT_ROUND2, Round2, check_round2, pseudo_label_round
from elta_core.run_state import fingerprint
from elta_core.training_options import check_lr_schedule, lr_factor

Stage = Literal["round1", "calibration", "unlabelled", "grid", "selection", "round2"]
STAGES: tuple[Stage, ...] = ("round1", "calibration", "unlabelled", "grid", "selection", "round2")
CHUNKS = "chunks"  # the folder of the predictions saved chunk by chunk
DEFAULT_PREDICTION_CHUNK = 50_000
TrainFn = Callable[[ELTAWrapper, DataLoader, "DataLoader | None", int], Any]
MaxPseudoLabels = Union[int, Literal["labelled"], None]


class SelfTraining:
    """One round of APDS self-training, resumable stage by stage.

    Args:
        wrapper: the wrapped model (a distribution head).
        workdir: where each stage is saved: ``round1.pt``, ``calibration.pt``,
            ``unlabelled.pt``, ``grid.json`` (+ ``grid.md``), ``selection.pt``, ``round2.pt``.
        train: ``train(wrapper, labelled_loader, pseudo_loader, round)``; the default runs
            :func:`fit` for ``epochs`` with ``optimizer(parameters)`` (AdamW, lr 1e-3).
        round2: ``"concat"`` (default: pseudo-labelled samples join the labelled set and
            get TFA and FLSA) or ``"separate"`` (``L_u`` on separate batches); see
            :mod:`elta_core.pseudo_labels`. With ``"concat"``, ``train`` gets the joined
            loader and ``pseudo_loader=None``.
        max_pseudo_labels: at most this many pseudo-labels, most confident first:
            ``"labelled"`` (default, the labelled set's size; this library's rule for
            large pools), an int, or None for no cap.
        betas, thresholds, min_selected, pseudo_label: as in
            :func:`elta_core.apds.grid_search`.
        batch_size, loader_kwargs: for the DataLoaders built from the datasets.
        tag: JSON-able settings of ``train``/``optimizer`` that the run directory cannot
            see (e.g. ``{"lr": 1e-3}``): a trained stage is reused only under the same tag.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the default ``train`` (:func:`fit`).
        lr_schedule: ``"constant"`` or ``"cosine"`` over ``epochs`` for the default
            ``train`` (:func:`~elta_core.training_options.lr_factor`).
        prediction_chunk: the calibration set and the pool are predicted this many images
            at a time, each chunk saved as done (in ``workdir/chunks``): a run killed in a
            large pool resumes at its chunk. Images are streamed, never all in memory.

    ``workdir`` holds ``manifest.json`` (:mod:`elta_core.run_state`): a stage is reused
    only when its settings, its input data and the stages it was computed from are
    unchanged, and its file is undamaged; each stage file carries the random number
    generators' state, so a resumed run continues exactly as an uninterrupted one.
    """

    def __init__(
        self,
        wrapper: ELTAWrapper,
        workdir: str | os.PathLike,
        *,
        train: TrainFn | None = None,
        epochs: int = 1,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
        round2: Round2 = DEFAULT_ROUND2,
        max_pseudo_labels: MaxPseudoLabels = "labelled",
        betas: Sequence[float] = apds.DEFAULT_BETAS,
        thresholds: apds.Thresholds = apds.DEFAULT_THRESHOLDS,
        min_selected: int | float = apds.DEFAULT_MIN_SELECTED,
        pseudo_label: apds.PseudoLabel = apds.DEFAULT_PSEUDO_LABEL,
        batch_size: int = 32,
        loader_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
        tag: Any = None,
        precision: Precision = "fp32",
        prediction_chunk: int = DEFAULT_PREDICTION_CHUNK,
        lr_schedule: str = "constant",
    ):
        if isinstance(prediction_chunk, bool) or not isinstance(prediction_chunk, int) or prediction_chunk < 1:
            raise ValueError(f"prediction_chunk: expected an int >= 1, got {prediction_chunk!r}")
        self.prediction_chunk = prediction_chunk
        self.wrapper = wrapper
        self.precision = precision
        self.workdir = Path(workdir)
        self.train_fn = train
        self.epochs = epochs
        self.lr_schedule = check_lr_schedule(lr_schedule)
        self.optimizer = optimizer or (lambda parameters: make_optimizer(torch.optim.AdamW, parameters, lr=1e-3))
        self.round2 = check_round2(round2)
        if max_pseudo_labels != "labelled" and max_pseudo_labels is not None and (
                isinstance(max_pseudo_labels, bool) or not isinstance(max_pseudo_labels, int) or max_pseudo_labels < 0):
            raise ValueError(f"max_pseudo_labels: expected 'labelled', an int >= 0 or None, got {max_pseudo_labels!r}")
        self.max_pseudo_labels = max_pseudo_labels
        self.betas = tuple(betas)
        self.thresholds = thresholds if isinstance(thresholds, str) else tuple(thresholds)
        self.min_selected, self.pseudo_label = min_selected, pseudo_label
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.batch_size, self.loader_kwargs = batch_size, dict(loader_kwargs or {})
        self.progress, self.tag = progress, tag
        self.checkpoints = Checkpointer(self.workdir, self._generators, file_names={"grid": "grid.json"})
        # per round: each epoch's mean loss and terms (the default train only), kept with the stage
        self.epochs_log: dict[int, list[dict[str, float]]] = {}

    def path(self, stage: Stage) -> Path:
        return self.checkpoints.path(stage)

    def done(self, stage: Stage) -> bool:
        """Whether ``stage``'s file is there, recorded in the manifest (it is reused only if
        it also matches this run's settings and inputs)."""
        return self.checkpoints.done(stage)

    def _generators(self) -> list[torch.Generator | None]:
        return [self.wrapper.generator, self.loader_kwargs.get("generator")]

    def _loader(self, dataset: Dataset) -> DataLoader:
        return training_loader(dataset, self.batch_size, drop_last=False, **self.loader_kwargs)

    def _train(self, labelled: DataLoader, pseudo: DataLoader | None, round_index: int) -> None:
        if self.train_fn is not None:
            self.train_fn(self.wrapper, labelled, pseudo, round_index)
            return
        optimizer = self.optimizer(self.wrapper.parameters())
        terms: list[dict[str, float]] = []
        losses = fit(self.wrapper, labelled, optimizer, epochs=self.epochs, pseudo_loader=pseudo,
                     progress=self.progress, desc=f"round {round_index}", precision=self.precision, epoch_terms=terms,
                     lr_schedule=lr_factor(self.lr_schedule, self.epochs))
        self.epochs_log[round_index] = [{"loss": loss, **parts} for loss, parts in zip(losses, terms)]

    def _weights(self, stage: Stage, key: str, train: Callable[[], None]) -> None:
        round_index = int(stage[-1])

        def compute() -> dict:
            train()
            return {"model": self.wrapper.model.state_dict(), "epochs": self.epochs_log.get(round_index, [])}

        def restore(record: dict) -> None:
            self.wrapper.model.load_state_dict(record["model"])
            self.epochs_log[round_index] = list(record.get("epochs", []))

        self.checkpoints.cached(stage, key, compute, restore)

    def _predictions(self, stage: Stage, dataset: Dataset) -> dict[str, torch.Tensor]:
        """The model's logits (and labels) on ``dataset``, predicted ``prediction_chunk``
        images at a time; each chunk is saved as it is done, so a run killed in a long pool
        resumes at the chunk it was in. The chunks give way to the stage's file."""
        manifest = self.checkpoints.manifest
        key = manifest.stage_key(stage, {"data": dataset_fingerprint(dataset)}, ["round1"])
        starts = range(0, len(dataset), self.prediction_chunk)
        names = [f"{stage}.{k:05d}" for k in range(len(starts))]

        def chunk(name: str, start: int) -> dict:
            rows = range(start, min(start + self.prediction_chunk, len(dataset)))
            path, chunk_key = self.workdir / CHUNKS / f"{name}.pt", fingerprint({"stage": key, "rows": [rows.start, rows.stop]})
            if self.checkpoints.current(name, chunk_key, path):
                return self.checkpoints.load(name, path)
            logits, labels = predict_dataset(self.wrapper, Subset(dataset, rows), batch_size=self.batch_size,
                                             progress=self.progress, desc=f"predict {stage} {name[-5:]}",
                                             loader_kwargs=self.loader_kwargs)
            record = {"logits": logits} if labels is None else {"logits": logits, "labels": labels}
            self.checkpoints.save(name, record, chunk_key, path)
            return record

        def compute() -> dict:
            records = [chunk(name, start) for name, start in zip(names, starts)]
            if not records:
                return {"logits": torch.zeros(0, 0)}
            return {field: torch.cat([r[field] for r in records]) for field in records[0]}

        record = self.checkpoints.cached(stage, key, compute, lambda record: record)
        for name in names:  # the stage's file holds them all now
            if is_main():
                (self.workdir / CHUNKS / f"{name}.pt").unlink(missing_ok=True)
            manifest.forget(name)
        return record

    def _training_settings(self, labelled: Dataset) -> dict[str, Any]:
        """What a trained stage depends on besides its upstream stages."""
        train = self.train_fn or self.optimizer
        return {"config": fingerprint(vars(self.wrapper.elta_config)), "head": self.wrapper.head_name,
                "architecture": fingerprint([(k, tuple(v.shape)) for k, v in self.wrapper.model.state_dict().items()]),
                "labelled": dataset_fingerprint(labelled), "epochs": self.epochs, "batch_size": self.batch_size,
                "train": getattr(train, "__qualname__", type(train).__name__), "tag": self.tag,
                "precision": self.precision,
                # a constant schedule is left out, so that stages saved before the option existed stay current
                **({"lr_schedule": self.lr_schedule} if self.lr_schedule != "constant" else {})}

    def run(self, labelled: Dataset, calibration: Dataset, unlabelled: Dataset, *,
            stop_after: Stage | None = None, round1: Literal["train", "current"] = "train") -> dict[str, Any]:
        """Run (or resume) all stages; ``stop_after`` ends the run after that stage.
        ``round1="current"`` takes the wrapper's current weights as round 1 (already
        trained) instead of training them.

        Returns a summary: the grid search result, the number selected and kept, and the
        paths of the saved stages.
        """
        if stop_after is not None and stop_after not in STAGES:
            raise ValueError(f"stop_after: expected one of {', '.join(STAGES)}, got {stop_after!r}")
        if round1 not in ("train", "current"):
            raise ValueError(f"round1: expected 'train' or 'current', got {round1!r}")
        weights = fingerprint(list(self.wrapper.model.state_dict().values()))
        state: dict[str, Any] = {"labelled": labelled, "calibration": calibration, "unlabelled": unlabelled,
                                 "round1": round1, "initial_weights": weights,
                                 "training": self._training_settings(labelled)}  # hashed once, for both rounds
        summary: dict[str, Any] = {"workdir": str(self.workdir)}
        for stage in STAGES:
            getattr(self, f"_stage_{stage}")(state, summary)
            if stage == stop_after:
                return summary
        summary["paths"] = {stage: str(self.path(stage)) for stage in STAGES}
        return summary

    def _stage_round1(self, state: dict, summary: dict) -> None:
        settings = {**state["training"], "weights": state["initial_weights"], "mode": state["round1"]}
        key = self.checkpoints.manifest.stage_key("round1", settings)
        if state["round1"] == "current":
            self._weights("round1", key, lambda: None)
        else:
            self._weights("round1", key, lambda: self._train(self._loader(state["labelled"]), None, 1))

    def _stage_calibration(self, state: dict, summary: dict) -> None:
        state["calibration_record"] = self._predictions("calibration", state["calibration"])
        if "labels" not in state["calibration_record"]:
            raise ValueError("calibration: expected a labelled dataset of (x, y) items")

    def _stage_unlabelled(self, state: dict, summary: dict) -> None:
        state["pool"] = self._predictions("unlabelled", state["unlabelled"])

    def _round_settings(self, labelled: Dataset) -> dict[str, Any]:
        return {"betas": self.betas, "thresholds": self.thresholds, "min_selected": self.min_selected,
                "pseudo_label": self.pseudo_label, "cap": self.max_pseudo_labels, "labelled": len(labelled),
                "bin_values": self.wrapper.bin_values, "score_scale": self.wrapper.score_scale}

    def _stage_grid(self, state: dict, summary: dict) -> None:
        """The grid search and the selection come from one core round; both are reused
        only together."""
        manifest, settings = self.checkpoints.manifest, self._round_settings(state["labelled"])
        grid_key = manifest.stage_key("grid", settings, ["calibration", "unlabelled"])
        if self.checkpoints.current("grid", grid_key) and self.checkpoints.current(
                "selection", manifest.stage_key("selection", settings, ["grid", "unlabelled"])):
            summary["grid"] = self.checkpoints.load("grid")
            return
        manifest.forget("grid")
        record, pool = state["calibration_record"], state["pool"]
        cap = len(state["labelled"]) if self.max_pseudo_labels == "labelled" else self.max_pseudo_labels
        result = on_main(lambda: pseudo_label_round(  # once, on rank 0; every rank gets the same selection
            record["logits"], record["labels"], pool["logits"], betas=self.betas, thresholds=self.thresholds,
            bin_values=self.wrapper.bin_values, min_selected=self.min_selected, pseudo_label=self.pseudo_label,
            score_scale=self.wrapper.score_scale, max_selected=cap,
        ))
        summary["grid"] = result.grid.as_dict()
        if is_main():
            atomic_write_text(self.workdir / "grid.md", result.grid.to_markdown() + "\n")
        self.checkpoints.save("grid", summary["grid"], grid_key)
        state["round"] = result

    def _stage_selection(self, state: dict, summary: dict) -> None:
        manifest = self.checkpoints.manifest
        key = manifest.stage_key("selection", self._round_settings(state["labelled"]), ["grid", "unlabelled"])
        if "round" in state:
            result = state["round"]
            selection = {"indices": result.indices, "labels": result.labels,
                         "num_selected": torch.tensor(result.num_selected)}
            self.checkpoints.save("selection", selection, key)
        else:
            selection = self.checkpoints.load("selection")
        state["selection"] = selection
        summary["num_selected"] = int(selection["num_selected"])
        summary["num_kept"] = len(selection["indices"])

    def _stage_round2(self, state: dict, summary: dict) -> None:
        selection, labelled = state["selection"], state["labelled"]
        labels = selection["labels"]
        if self.round2 == "concat" and len(labels) and len(labelled) and is_score_label(labelled[0]):
            values = torch.as_tensor(self.wrapper.bin_values or range(1, labels.shape[1] + 1), dtype=labels.dtype)
            labels = labels @ values  # join a score-labelled set with the pseudo-labels' scores
        pseudo = PseudoLabelledDataset(state["unlabelled"], selection["indices"], labels)
        if self.round2 == "concat":
            loaders = (self._loader(ConcatDataset([labelled, pseudo]) if len(pseudo) else labelled), None)
        else:
            loaders = (self._loader(labelled), self._loader(pseudo) if len(pseudo) else None)
        settings = {**state["training"], "round2": self.round2}
        key = self.checkpoints.manifest.stage_key("round2", settings, ["round1", "selection"])
        self._weights("round2", key, lambda: self._train(*loaders, 2))
