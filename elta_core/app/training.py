"""What ``elta train``, ``elta evaluate`` and ``elta pseudo-label`` do, on real datasets.

A torchvision or timm backbone gets a head over the dataset's C rating levels (10, or 9
for PARA; :mod:`elta_core.app.models`), is trained with TFA / FLSA switched on by flags
under a recipe (:mod:`elta_core.app.recipe`), checkpointed every epoch or every
``--checkpoint-every`` epochs (atomically; ``--resume`` continues), validated every epoch
when there is a validation set (the best epoch kept as ``best.pt``), and tested with
:mod:`elta_core.metrics`. ``--apds`` adds one self-training round.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from elta_core import losses as core_losses
from elta_core import metrics
from elta_core.adapters.torch import ELTAWrapper, SelfTraining, fit
from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch import peers, rng
from elta_core.adapters.torch.data import ImageLabelDataset, iaa_transforms, image_files
from elta_core.adapters.torch.modules import device_of, find_module
from elta_core.adapters.torch.checkpoints import load_file, save_and_record
from elta_core.adapters.torch.loop import BASE_LR, lr_factor, make_optimizer, training_loader
from elta_core.adapters.torch.prediction import predict_dataset
from elta_core.app import recipe
from elta_core.app.config import (ROUND2_ONLY, EvaluateConfig, PseudoLabelConfig, TrainConfig, may_change_on_resume,
                                  run_identity)
from elta_core.app.models import build_model
from elta_core.data.labels import LabelTable, load_labels
from elta_core.io import atomic_write, atomic_write_json, atomic_write_text
from elta_core.pseudo_labels import pseudo_label_round
from elta_core.run_state import RunManifest, StaleStateError, fingerprint, sha256_of_file

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
# What a run recorded before an option existed did, so that it resumes under that value.
SETTINGS_BEFORE_RECORDED = {"lr_schedule": "constant"}


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

    def build(self, weights: str | None = None):
        return build_model(self.backbone, self.num_bins, self.head_type, weights, top=self.scale[1])


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


class DataSplits(NamedTuple):
    train: LabelTable
    validation: LabelTable | None
    test: LabelTable
    calibration: LabelTable | None = None  # APDS's grid search, held out of the training rows


def _rows(table: LabelTable, names: tuple[str, ...]) -> np.ndarray:
    return np.array([s in names for s in table.split])


def _hold_out(table: LabelTable, fraction: float, seed: int) -> tuple[LabelTable, LabelTable]:
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(table))
    cut = max(1, int(round(len(table) * fraction)))
    return table.subset(np.sort(order[cut:])), table.subset(np.sort(order[:cut]))


def split_table(table: LabelTable, val_fraction: float, seed: int) -> tuple[LabelTable, LabelTable]:
    """Training and test rows: the file's own split where it has one, else a seeded random
    ``val_fraction`` hold-out."""
    if table.split is not None and "train" in table.split:
        held_out = [s for s in ("test", "testnew", "validation", "val") if s in table.split]
        if held_out:
            return table.subset(_rows(table, ("train",))), table.subset(_rows(table, (held_out[0],)))
    return _hold_out(table, val_fraction, seed)


def data_splits(settings: TrainConfig, table: LabelTable) -> DataSplits:
    """Training, validation and test rows. Test: ``--test-labels``, else the file's test
    split, else a random hold-out. Validation: ``--val-labels``, else the file's validation
    split (when it also has a test split), else, when ``--select-best`` needs one, a random
    ``--val-fraction`` of the training rows."""
    load = lambda path: load_labels(path, settings.format, image_root=settings.images, **settings.csv_options())  # noqa: E731
    if settings.test_labels:
        train_rows, test = table, load(settings.test_labels)
        if table.split is not None and "train" in table.split:
            train_rows = table.subset(_rows(table, ("train",)))
    else:
        train_rows, test = split_table(table, settings.val_fraction, settings.seed)
    validation = None
    if settings.val_labels:
        validation = load(settings.val_labels)
    elif _has_own_validation_split(table):
        validation = table.subset(_rows(table, ("validation", "val")))
    elif settings.select_best != "none":
        train_rows, validation = _hold_out(train_rows, settings.val_fraction, settings.seed + 1)
        if ddp.is_main():
            print(f"select-best: no validation set given; holding out {len(validation)} training images for it "
                  "(--val-fraction)")
    calibration = None
    if settings.apds and not settings.calibration and validation is None and settings.calibrate_on == "auto":
        train_rows, calibration = _hold_out(train_rows, settings.val_fraction, settings.seed + 2)
        if ddp.is_main():
            print(f"apds: no validation set given; holding out {len(calibration)} training images to calibrate "
                  "(beta, t) on (--val-fraction; --calibrate-on test would use the test split)")
    return DataSplits(train_rows, validation, test, calibration)


def holds_out_calibration(settings: TrainConfig) -> bool:
    """Whether an ``--apds`` run holds training images out to calibrate (beta, t) on (no
    validation set, no ``--calibration``): its round 1 then trains on fewer rows than the
    same run without APDS (:func:`data_splits`)."""
    if not settings.apds or settings.calibration or settings.calibrate_on != "auto" or settings.val_labels:
        return False
    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    if recipe.resolve(settings, table.distributions is not None).select_best != "none":
        return False  # its validation hold-out calibrates
    return not _has_own_validation_split(table)


def _has_own_validation_split(table: LabelTable) -> bool:
    """Whether the label file names validation rows beside its test rows (then they are the
    validation set; :func:`data_splits`)."""
    split = set(table.split) if table.split is not None else set()
    return bool(split & {"test", "testnew"} and split & {"validation", "val"})


def _device(name: str | None) -> torch.device:
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device: {name} is not available on this machine ({torch.cuda.device_count()} CUDA "
                         "device(s)); use --device cpu")
    return device


def _output_folder(path: str) -> Path:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out: {folder} is a file; give a directory")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


UNDEFINED = "undefined"  # a metric that is not a number (PLCC/SRCC of constant predictions), never NaN


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if math.isfinite(v) else UNDEFINED) if isinstance(v, float) else v
                         for k, v in row.items()})
    return buffer.getvalue()


def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with every non-finite number as null, and their names under
    ``"undefined_metrics"`` (JSON has no NaN, and a NaN is never reported as a number)."""
    undefined = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    ready = {k: (None if k in undefined else v) for k, v in result.items()}
    if undefined:
        ready["undefined_metrics"] = undefined
    return ready


def _write_metrics(result: dict[str, Any], out: Path, stem: str) -> None:
    atomic_write_json(out / f"{stem}.json", json_ready(result))
    atomic_write_text(out / f"{stem}.csv", _csv_text([result]))


SMALL_TAIL = 30  # fewer images than this in a tail make its L or H vary a lot from one split to the next


def format_metrics(result: dict[str, float]) -> str:
    names = [("plcc", "P (PLCC)"), ("srcc", "S (SRCC)"), ("accuracy", "accuracy"), ("mse", "MSE"),
             ("mae_low", "L (low MAE)"), ("mae_medium", "M (medium MAE)"), ("mae_high", "H (high MAE)")]
    shown = lambda v: f"{v:.4f}" if math.isfinite(v) else f"{UNDEFINED} (constant predictions?)"  # noqa: E731
    lines = [f"{label:>15}: {shown(result[key])}" for key, label in names]
    if "tail_images" in result:
        tail, total = int(result["tail_images"]), int(result["num_images"])
        lines.append(f"{'tails':>15}: L and H over {tail} images each (the low and high 20 % of {total})")
        if tail < SMALL_TAIL:
            lines.append(f"warning: a tail of {tail} images (fewer than {SMALL_TAIL}) gives an L and H that vary a lot "
                         "from one split to another; evaluate on a larger test set before reading them")
    return "\n".join(lines)


class Evaluation(NamedTuple):
    metrics: dict[str, float]
    predictions: str  # predictions.csv: image, true score, predicted score, predicted distribution, segment
    true: np.ndarray
    predicted: np.ndarray


def evaluate_model(wrapper: ELTAWrapper, dataset: ImageLabelDataset, table: LabelTable, batch_size: int,
                   progress: bool, desc: str = "evaluate", loader_kwargs: dict | None = None) -> Evaluation:
    """Metrics of the model on ``dataset`` (rows of ``table``), and its per-image predictions."""
    if len(dataset) < 2:
        raise ValueError(f"labels: {len(dataset)} image(s) to evaluate; PLCC and SRCC need at least 2")
    outputs, _ = predict_dataset(wrapper, dataset, batch_size=batch_size, progress=progress, desc=desc, raw=True,
                                 loader_kwargs=loader_kwargs)
    kind = wrapper.output_kind(outputs)
    predicted = core_losses.output_scores(outputs, kind, table.bin_values).double().numpy()
    rows = list(dataset.rows)
    true = table.scores[rows]
    low, high = table.scale
    result = metrics.evaluate(predicted, true, threshold=low + (high - low) * 4 / 9)
    result["num_images"] = float(len(true))
    result["tail_images"] = float(metrics.segment_sizes(len(true))[0])
    segments = metrics.segments(true)
    header = ["image", "true_score", "predicted_score"]
    distributions = None
    if kind != "score":
        distributions = (outputs if kind == "probs" else torch.softmax(outputs.double(), dim=1)).numpy()
        header += [f"p_{v:g}" for v in table.bin_values]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header + ["segment"])
    for k, row in enumerate(rows):
        extra = [f"{p:.6f}" for p in distributions[k]] if distributions is not None else []
        writer.writerow([table.images[row], f"{true[k]:.6g}", f"{predicted[k]:.6g}", *extra, segments[k]])
    return Evaluation(result, buffer.getvalue(), true, predicted)


def write_predictions(evaluation: Evaluation, out: Path, title: str) -> None:
    """``predictions.csv`` and, where matplotlib is installed, ``predictions.png``: predicted
    against true scores with the low and high 20 % shaded, L, M, H and P in it."""
    atomic_write_text(out / "predictions.csv", evaluation.predictions)
    try:
        from elta_core.app.plotting import predicted_against_true, pyplot, save_png

        fig, axis = pyplot().subplots(figsize=(6, 5.5))
    except ImportError:
        print('predictions.png not written: pip install "elta-core[plot]" for the picture')
        return
    predicted_against_true(axis, evaluation.true, [evaluation.predicted], title)
    fig.tight_layout()
    save_png(fig, out / "predictions.png")


def open_run(settings: TrainConfig, world_size: int = 1, images: list[str] | None = None) -> RunManifest:
    """The run directory ``--out``: a new or empty one, or with ``--resume`` one whose
    manifest matches this run's settings and inputs (``--epochs`` may change)."""
    out = _check_out_folder(settings.out)
    if _never_trained(out):  # a start that failed before its first epoch is not an earlier run
        for name in ("manifest.json", SPLIT_FILE):
            (out / name).unlink(missing_ok=True)
    if out.is_dir() and any(out.iterdir()) and not settings.resume:
        raise ValueError(f"out: {out} is not empty (an earlier run?); pass --resume to continue it, "
                         "or give a new --out")
    manifest = RunManifest(out)
    if settings.resume and "checkpoint" in manifest.data["stages"] and (out / CHECKPOINT).is_file():
        _check_epochs_not_fewer(out / CHECKPOINT, settings.epochs)  # before the manifest takes the new setting
    config = run_identity(settings, world_size=world_size)  # the fields that decide reuse, marked in TrainConfig
    for name, value in SETTINGS_BEFORE_RECORDED.items():  # a run recorded before the option existed
        if manifest.data.get("config"):
            manifest.data["config"].setdefault(name, value)
    before = dict(manifest.data.get("config") or {})
    _keep_recorded_spelling(config, before)
    _check_schedule_unchanged(settings, before)
    for name in manifest.check_config(config, may_change=may_change_on_resume(TrainConfig)):
        print(f"resume: {name} changed from {before.get(name)!r} to {config.get(name)!r}")
    inputs = {"labels": _path_fingerprint(settings.labels)}
    for name in ("weights", "val_labels", "test_labels"):
        if getattr(settings, name, None):
            inputs[name] = _path_fingerprint(getattr(settings, name))
    if images is not None:
        inputs["images"] = images_fingerprint(images, settings.images)
        recorded = (manifest.data.get("inputs") or {}).get("images")
        if recorded not in (None, inputs["images"]) and recorded == images_fingerprint(images, settings.images,
                                                                                          relative=False):
            manifest.data["inputs"]["images"] = inputs["images"]  # recorded before the names were relative
    manifest.check_inputs(inputs)
    return manifest


PATH_SETTINGS = ("labels", "images", "weights", "val_labels", "test_labels", "unlabelled", "calibration",
                 "round1_from")


def _same_location(a: Any, b: Any) -> bool:
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def _keep_recorded_spelling(config: dict[str, Any], recorded: dict[str, Any]) -> None:
    """A path setting that names the recorded file or folder in another spelling (``DIR/``,
    ``./DIR``, relative or absolute) is the same setting: the recorded spelling is kept."""
    for name in PATH_SETTINGS:
        if name in config and config[name] != recorded.get(name) and _same_location(config[name], recorded.get(name)):
            config[name] = recorded[name]


def _check_epochs_not_fewer(path: Path, epochs: int) -> None:
    """A resumed run may train more epochs, never report fewer than it has trained."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: tensors stay on disk
    except Exception:  # noqa: BLE001 - a damaged checkpoint is named where it is loaded
        return
    trained = int((state.get("resume") or state).get("epoch", 0))
    if trained > epochs:
        raise ValueError(f"epochs: the run in {path.parent} has trained {trained} epochs; --epochs {epochs} would "
                         f"report that {trained}-epoch model as a {epochs}-epoch one: give --epochs {trained} or "
                         "more, or a new --out")


def _check_out_folder(out: str) -> Path:
    """``--out`` as a path, refused where it names a file."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out: {folder} is a file; give a directory for the run")
    return folder


def _never_trained(out: Path) -> bool:
    """Whether ``out`` holds nothing but a manifest that records no stage (and the split it
    was about to train on): a run that failed in its first seconds (a missing extra, a
    bad image)."""
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if "manifest.json" not in names or not names <= {"manifest.json", SPLIT_FILE}:
        return False
    try:
        stages = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("stages")
    except (OSError, ValueError, AttributeError):
        return False
    return not stages


def images_fingerprint(paths: list[str], images_root: str | None = None, relative: bool = True) -> str:
    """A cheap fingerprint of image files, so that a resumed run notices images that
    changed under it: each one's name, size and modification time (a stat, no read); the
    copies in a folder that ``elta prepare`` wrote count by the content it recorded, while
    their stat is the recorded one (so preparing them again, to the same bytes, changes
    nothing). Names are taken relative to ``images_root`` (``relative=False``: as given,
    the fingerprint of runs recorded before), so its spelling does not matter."""
    from elta_core.app.prepare import recorded_contents

    records = recorded_contents(images_root)
    named = (lambda path: os.path.relpath(path, images_root)) if relative and images_root else (lambda path: path)  # noqa: E731

    def identity(path: str) -> list:
        try:
            info = os.stat(path)
        except OSError:
            return [named(path), None, None]
        name = named(path)
        record = records.get(str(Path(path).resolve()))
        if record is not None and record.get("stat") == [info.st_size, info.st_mtime_ns]:
            return [name, record.get("sha256")]
        return [name, info.st_size, info.st_mtime_ns]

    return fingerprint([identity(path) for path in paths])


def _path_fingerprint(path: str) -> str:
    path = Path(path)
    if path.is_dir():
        return fingerprint([[str(p.relative_to(path)), sha256_of_file(p)] for p in sorted(path.rglob("*")) if p.is_file()])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return sha256_of_file(path)


SPLIT_NAMES = ("train", "validation", "val", "test", "testnew")


def _check_splits(table: LabelTable, splits: DataSplits) -> None:
    """Refuse, before training, what would make the reported numbers wrong: split names
    that are not splits, test images that are also training images, a test set too small
    for the metrics."""
    if table.split is not None:
        unknown = sorted(set(table.split) - set(SPLIT_NAMES) - {""})
        if unknown:
            raise ValueError(f"split: {table.source} names split(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(SPLIT_NAMES)} (its rows would otherwise be trained on)")
    trained = set(splits.train.images)
    for argument, name, part in (("test_labels", "test", splits.test), ("val_labels", "validation", splits.validation),
                                 ("calibration", "calibration", splits.calibration)):
        shared = [image for image in (part.images if part is not None else []) if image in trained]
        if shared:
            raise ValueError(f"{argument}: {len(shared)} of the {len(part)} {name} images are also training images "
                             f"(e.g. {Path(shared[0]).name}); their metrics would be training metrics: give disjoint "
                             "files")
    if len(splits.test) < 3 and len(splits.train) >= 2:  # too few training images: named where they are counted
        raise ValueError(f"labels: the test split holds {len(splits.test)} image(s); the metrics need at least 3 "
                         "(give --test-labels, or a larger --val-fraction)")


def _check_choices_not_on_test(settings: TrainConfig, splits: DataSplits) -> None:
    """Refuse a validation split that shares images with the test split where it chooses
    something: the best epoch (``--select-best``) or APDS's (beta, t); the choice would be
    made on the test set (``--calibrate-on test`` is the way to ask for that)."""
    if splits.validation is None or not (settings.select_best != "none" or (settings.apds and not settings.calibration)):
        return
    tested = set(splits.test.images)
    shared = [image for image in splits.validation.images if image in tested]
    if shared:
        what = "the best epoch" if settings.select_best != "none" else "APDS's (beta, t)"
        raise ValueError(f"val_labels: {len(shared)} of the {len(splits.validation)} validation images are also test "
                         f"images (e.g. {Path(shared[0]).name}), so {what} would be chosen on the test set: give "
                         "--val-labels a file disjoint from the test split")


def _check_train_args(settings: TrainConfig) -> None:
    if settings.lr is None or not (math.isfinite(settings.lr) and settings.lr > 0):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {settings.lr}")
    if settings.round2_lr is not None and not (math.isfinite(settings.round2_lr) and settings.round2_lr > 0):
        raise ValueError(f"round2_lr: expected a finite learning rate > 0, got {settings.round2_lr}")
    if settings.head == "sigmoid" and settings.apds:
        raise ValueError("apds: needs a distribution head (--head linear or emd-mlp); --head sigmoid predicts one "
                         "score per image, which APDS cannot sharpen")
    named = list(getattr(settings, "peers", None) or [])
    changing = peers.task_loss_changers([peers.PEERS[name] for name in named])  # before the run directory is touched
    if changing and settings.head == "sigmoid":
        raise ValueError(f"peers: {changing[0]} changes the task loss, and --head sigmoid has its own (MSE on the "
                         f"labels' scale); use --head linear or emd-mlp with {changing[0]}")
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


def _open_run_everywhere(settings: TrainConfig, images: list[str] | None = None) -> RunManifest:
    """Rank 0 checks and records the run directory (an error stops every rank); the other
    ranks of a DDP run read the same directory, which must be shared, and never write."""
    opened: dict[str, RunManifest] = {}

    def check_and_record() -> None:  # returns nothing: the manifest is not sent to the other ranks
        opened["manifest"] = open_run(settings, ddp.world_size(), images)

    ddp.on_main(check_and_record)
    return opened.get("manifest") or RunManifest(settings.out, writer=False)


def _write_on_main(write, *settings) -> None:
    if ddp.is_main():
        write(*settings)


@contextlib.contextmanager
def _threads(settings: Any) -> Iterator[None]:
    """torch's thread count for the command (:func:`cpu_budget`), restored after it (compare
    and the tests call the commands in their own process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_budget(settings.workers, settings.threads)[1])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(settings: TrainConfig) -> dict[str, Any]:
    """``elta train``: returns the test metrics of the final model (the best epoch's with
    ``--select-best``, the round-2 model with ``--apds``). Under ``torchrun`` every process
    runs this: the model is wrapped in DistributedDataParallel, FLSA sees the global batch
    (``--flsa-scope global``), and rank 0 writes every file."""
    with _threads(settings), contextlib.ExitStack() as held:
        return _train(settings, hold_out=lambda: held.enter_context(_run_lock(settings.out)))


@contextlib.contextmanager
def _run_lock(out: str) -> Iterator[None]:
    """Hold ``--out`` for this run alone (rank 0 under torchrun; the folder is made if need
    be): a second ``elta train`` on the same directory is refused while this one runs,
    instead of both writing it. An advisory lock on the directory itself, so nothing is
    added to it and a killed run leaves no stale lock."""
    if not ddp.is_main_by_environment():
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder = _check_out_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"out: another elta train is running in {folder}; wait for it to finish (then "
                             "--resume), or give another --out") from None
        yield
    finally:
        os.close(handle)  # closing releases the lock


def _train(settings: TrainConfig, hold_out: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    settings = recipe.resolve(settings, table.distributions is not None)
    _check_train_args(settings)
    device = ddp.init_from_environment(_device(settings.device))
    hold_out()  # --out is this run's alone from here (the arguments were checked: a refused run leaves no folder)
    manifest = _open_run_everywhere(settings, list(table.images))
    out = Path(settings.out)
    torch.manual_seed(settings.seed)
    splits = data_splits(settings, table)
    _write_on_main(_write_split, out, splits)
    config = RunConfig(settings.backbone, len(table.bin_values), table.bin_values.tolist(), list(table.scale),
                       settings.image_size, "", settings.head, settings.resize, settings.eval_transform == "crop")
    model, config.head, skipped = config.build(settings.weights)
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
        trained, head, tfa=settings.tfa, num_pairs=settings.num_pairs, flsa_weight=settings.flsa, align_at=align_at,
        bin_values=config.bin_values, score_scale=score_scale_of(table), seed=settings.seed + ddp.rank(),
        flsa_scope=settings.flsa_scope if ddp.is_distributed() else "local",
        task_loss=ScaledScoreMSE(table.scale[1], config.bin_values) if settings.head == "sigmoid" else None,
        peers=_peers(settings, splits.train),
    )
    train_data, val_data, test_data, held_out = _datasets(settings, splits, config)
    pool = unlabelled_pool(settings, table, config) if settings.apds else None  # its errors before round 1
    _check_splits(table, splits)
    _check_choices_not_on_test(settings, splits)
    optimizer = make_optimizer(OPTIMIZERS[settings.optimizer], wrapper.parameters(), lr=settings.lr)
    if settings.round1_from:
        _adopt_round1(settings, manifest, splits)
        settings = settings.replace(resume=True)  # round 1 resumes from the checkpoint taken
    round1 = _train_epochs(settings, wrapper, model, train_data, val_data, optimizer, config, manifest)
    if round1 is None:
        return {}
    evaluated, best = CHECKPOINT, round1.get("best")
    if settings.select_best != "none":
        best_state = _load_best(manifest, best, device)
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
        _self_training_round(settings, wrapper, model, pool, train_data, calibration, round1, config, manifest)
        evaluated = CHECKPOINT
    evaluation = evaluate_model(wrapper, test_data, splits.test, settings.batch_size, _progress(settings), desc="test",
                                loader_kwargs=loader_options(settings.workers, device, settings.threads))
    result: dict[str, Any] = dict(evaluation.metrics)
    result["skipped_images"] = float(sum(len(d.skipped) for d in (train_data, val_data, test_data) if d is not None))
    result["checkpoint"] = evaluated
    result["world_size"] = ddp.world_size()
    if best:
        result.update(best_epoch=best["epoch"], **{f"best_val_{settings.select_best}": best["value"]})
    _write_on_main(write_predictions, evaluation, out, f"{settings.backbone}, test split")
    _write_on_main(atomic_write_json, out / "metrics.json", json_ready(result))
    if skipped and ddp.is_main():
        print(f"weights: {len(skipped)} head tensors not loaded (a new head), e.g. {skipped[0]}")
    return result


def _peers(settings: TrainConfig, train_table: LabelTable) -> list:
    """The plug-ins named by ``--peers``, with their papers' defaults; LDS and FDS bin the
    training split's labels."""
    made = [peers.PEERS[name] for name in getattr(settings, "peers", None) or []]
    return [kind(train_table.scores) if kind.needs_train_labels else kind() for kind in made]


def default_workers() -> int:
    """This machine's cores (those this process may use), shared among the processes
    torchrun starts on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpu_budget(workers: int | None, threads: int | None) -> tuple[int, int]:
    """Loader workers and torch threads for one process, so that together they use this
    process's share of the cores and no more: by default half the cores compute (torch
    threads) and the rest load images. The threads never follow ``workers``: a result
    depends on the thread count in its last digits, and must not on the worker count."""
    cores = default_workers()
    if threads is None:
        threads = max(1, cores // 2)
    if workers is None:
        workers = max(0, cores - threads)
    return workers, threads


def loader_options(workers: int | None, device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """DataLoader options for training: ``workers`` processes (None: see :func:`cpu_budget`),
    pinned memory for a GPU, two batches prefetched per worker. Workers are not persistent:
    each epoch's workers get the dataset with the epoch set, which seeds the augmentation."""
    workers, _ = cpu_budget(workers, threads)
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        options["prefetch_factor"] = 2
    return options


def _progress(settings: TrainConfig | EvaluateConfig | PseudoLabelConfig) -> bool:
    return not settings.quiet and ddp.is_main()


CHECKPOINT_KEY = "epochs"  # the manifest key of checkpoint.pt: what it holds is resumable training


def _check_schedule_unchanged(settings: TrainConfig, recorded: dict) -> None:
    """Under a schedule other than ``constant``, the epochs already trained followed a
    schedule set by ``--epochs`` (``--round2-epochs``): a resumed run may not change them."""
    if settings.lr_schedule == "constant" or recorded.get("lr_schedule") != settings.lr_schedule:
        return  # a changed schedule itself is refused by the configuration check
    for name in ("epochs", "round2_epochs"):
        if name in recorded and recorded[name] != getattr(settings, name):
            flag = "--" + name.replace("_", "-")
            raise StaleStateError(
                f"{name}: the run's {settings.lr_schedule} schedule was set for {recorded[name]} epochs, so it cannot "
                f"resume with {getattr(settings, name)} ({settings.out}); keep {flag} "
                f"{recorded[name]}, or train a longer run in a new output directory (--lr-schedule constant runs "
                "may be extended)")


def _train_epochs(settings: TrainConfig, wrapper: ELTAWrapper, model: torch.nn.Module, data: ImageLabelDataset,
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
            losses = fit(wrapper, loader, optimizer, epochs=1, progress=_progress(settings),
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
            scores = evaluate_model(wrapper, validation, validation.table, settings.batch_size, _progress(settings),
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
        _write_on_main(atomic_write_text, manifest.folder / "metrics.csv", _csv_text(history))
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


def _load_best(manifest: RunManifest, best: dict | None, device: torch.device) -> dict:
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


def _adopt_round1(settings: TrainConfig, manifest: RunManifest, splits: DataSplits) -> None:
    """``--round1-from DIR``: DIR's finished round 1 (``checkpoint.pt``, and ``best.pt``
    under ``--select-best``) becomes this run's, so that only the APDS round trains. It is
    taken only where DIR trained the round 1 this run would (:func:`_check_same_round1`);
    round 1 is then bit-identical (``tests/test_round1_from.py``). A run whose own
    checkpoint is already there resumes it instead."""
    out, key = manifest.folder, manifest.stage_key("checkpoint", CHECKPOINT_KEY)
    if manifest.reusable("checkpoint", out / CHECKPOINT, key):
        return
    folder = Path(settings.round1_from)
    donor = _check_same_round1(settings, manifest, splits, folder)
    if not donor.reusable("checkpoint", folder / CHECKPOINT, key):  # hashes it: a damaged file is refused here
        raise ValueError(f"round1_from: {folder} has no finished checkpoint; train it first "
                         f"(elta train --resume --out {folder})")
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)
    trained = int((state.get("resume") or state).get("epoch", 0))
    if trained != settings.epochs:
        raise ValueError(f"round1_from: {folder} has trained {trained} of round 1's {settings.epochs} epochs; "
                         f"finish it first (elta train --resume --out {folder})")
    stages = [("checkpoint", CHECKPOINT)]
    if settings.select_best != "none":
        if not donor.reusable("best", folder / BEST, manifest.stage_key("best", CHECKPOINT_KEY)):
            raise ValueError(f"round1_from: {folder / BEST} is missing or does not match its run; train round 1 "
                             "here (leave out --round1-from)")
        stages.append(("best", BEST))
    for stage, name in stages:
        stage_key = manifest.stage_key(stage, CHECKPOINT_KEY)
        expected = donor.data["stages"][stage]["sha256"]
        ddp.on_main(lambda: _copy_verified(folder / name, out / name, expected))  # an error stops every rank
        manifest.record(stage, out / name, stage_key, expected)
    if ddp.is_main():
        print(f"round 1: taken from {folder}, trained to epoch {trained}; training the APDS round")


def _copy_verified(source: Path, target: Path, sha256: str) -> None:
    """``source`` copied to ``target`` atomically, refused unless its bytes have ``sha256``."""
    digest = hashlib.sha256()
    with open(source, "rb") as stream:
        atomic_write(target, lambda copy: shutil.copyfileobj(stream, copy, 1 << 20), digest=digest)
    if digest.hexdigest() != sha256:  # only the file the donor recorded is recorded here
        raise StaleStateError(f"round1_from: {source} changed while it was copied; run again")


def _check_same_round1(settings: TrainConfig, manifest: RunManifest, splits: DataSplits, folder: Path) -> RunManifest:
    """The manifest of run directory ``folder``, when it trains the round 1 this run would:
    the same settings but for :data:`~elta_core.app.config.ROUND2_ONLY`, the same label,
    image, weight and validation inputs, and the same training and validation rows."""
    if not settings.apds:
        raise ValueError("round1_from: only with --apds (it skips round 1 and trains the APDS round)")
    if folder.resolve() == manifest.folder.resolve():
        raise ValueError(f"round1_from: {folder} is this run's own --out; give another run's directory")
    if not (folder / "manifest.json").is_file():
        raise ValueError(f"round1_from: {folder} is not an elta train run directory (no manifest.json)")
    donor = RunManifest(folder, writer=False)
    theirs = {**SETTINGS_BEFORE_RECORDED, **(donor.data.get("config") or {})}
    mine = manifest.data["config"]
    differ = sorted(k for k in set(mine) | set(theirs) if k not in ROUND2_ONLY and mine.get(k) != theirs.get(k))
    if differ:
        details = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
        raise StaleStateError(f"round1_from: {folder} trained another round 1 ({details}); train round 1 here "
                              "(leave out --round1-from), or give a run with these settings")
    changed = [name for name in ("labels", "images", "weights", "val_labels")
               if manifest.data["inputs"].get(name) != donor.data["inputs"].get(name)]
    round1_rows = lambda split: [sorted(split.get(name, [])) for name in ("train", "validation")]  # noqa: E731
    if not changed and not (folder / SPLIT_FILE).is_file():
        changed = [f"it has no {SPLIT_FILE}"]
    if changed or round1_rows(_split_rows(folder / SPLIT_FILE)) != round1_rows(_split_images(splits)):
        what = ", ".join(changed) or f"the training or validation rows of its {SPLIT_FILE}"
        raise StaleStateError(f"round1_from: {folder} trained on other data ({what}); train round 1 here "
                              "(leave out --round1-from), or give a run on this data")
    return donor


def load_checkpoint_file(path: str | Path, device: torch.device) -> dict:
    """A checkpoint written by ``elta train``, or an error that names the file and what to do."""
    state = load_file(path, device, name="checkpoint",
                      what="it is damaged or not an elta checkpoint: restore it, or delete it and train again")
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"checkpoint: {path} was not written by elta train")
    return state


def round2_lr(settings: TrainConfig) -> float:
    """Round 2's learning rate: ``--round2-lr``; else round 1's with
    ``--round2-resume-optimizer``, or round 1's over
    :data:`~elta_core.app.recipe.ROUND2_LR_DIVISOR` for a fresh optimizer."""
    if settings.round2_lr is not None:
        return settings.round2_lr
    return settings.lr if settings.round2_resume_optimizer else settings.lr / recipe.ROUND2_LR_DIVISOR


def _round2_optimizer(settings: TrainConfig, round1: dict):
    """Round 2's optimizer at :func:`round2_lr`: round 1's, state included
    (``--round2-resume-optimizer``, as the authors resume), else a fresh one."""
    optimizer_class = OPTIMIZERS[settings.optimizer]
    if not settings.round2_resume_optimizer:
        return lambda parameters: make_optimizer(optimizer_class, parameters, lr=round2_lr(settings))
    saved = round1.get("round2_optimizer") or round1["optimizer"]

    def resumed(parameters):
        optimizer = make_optimizer(optimizer_class, parameters, lr=settings.lr)
        optimizer.load_state_dict(copy.deepcopy(saved))
        if settings.round2_lr is not None:  # load_state_dict brought round 1's rate (and schedule base) back
            for group in optimizer.param_groups:
                group["lr"] = group[BASE_LR] = settings.round2_lr
        return optimizer

    return resumed


def _self_training_round(settings: TrainConfig, wrapper: ELTAWrapper, model: torch.nn.Module, pool, train_data,
                         calibration: tuple, round1: dict, config: RunConfig, manifest: RunManifest) -> None:
    """``--apds``: one self-training round from the current weights (round 1: the last or
    the best epoch). The final checkpoint holds the round-2 model, and the round-1
    training state to resume from."""
    out = manifest.folder
    if not settings.unlabelled:
        raise ValueError("unlabelled: --apds needs --unlabelled (a folder of images or a label file)")
    trainer = SelfTraining(
        wrapper, out / "self_training", epochs=settings.round2_epochs, round2=settings.round2, betas=settings.betas,
        thresholds=settings.thresholds, min_selected=settings.min_selected, pseudo_label=settings.pseudo_label,
        max_pseudo_labels=None if settings.max_pseudo_labels == "none" else settings.max_pseudo_labels,
        optimizer=_round2_optimizer(settings, round1), batch_size=settings.batch_size, progress=_progress(settings),
        precision=settings.precision, lr_schedule=settings.lr_schedule, loader_kwargs=loader_options(settings.workers, device_of(model), settings.threads),
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
    _write_on_main(atomic_write_text, out / "metrics.csv",
                   _csv_text([{**row, "round": 1} for row in round1.get("history", [])] + round2_rows))
    if ddp.is_main():
        grid = summary["grid"]
        print(f"APDS: beta* {grid['beta']:g}, t* {grid['threshold']:g}, {summary['num_kept']} pseudo-labels kept of "
              f"{summary['num_selected']} selected; calibrated on {calibrated_on}; thresholds: {grid['thresholds_from']}")
    resume = {k: v for k, v in round1.items() if k != "round2_optimizer"}
    save_and_record({"model": model.state_dict(), "epoch": round1["epoch"], "config": round1["config"], "round": 2,
            "resume": resume}, out / CHECKPOINT, manifest, "checkpoint", manifest.stage_key("checkpoint", CHECKPOINT_KEY))


def unlabelled_pool(settings: TrainConfig | PseudoLabelConfig, table: LabelTable, config: RunConfig) -> ImageLabelDataset:
    if Path(settings.unlabelled).is_dir():
        files = image_files(settings.unlabelled)
        if not files:
            raise ValueError(f"unlabelled: no images in {settings.unlabelled} (looked for .jpg, .png, ... recursively)")
        pool_table = LabelTable(files, np.zeros(len(files)), None, table.bin_values, table.scale, source=settings.unlabelled)
    else:
        pool_table = load_labels(settings.unlabelled, settings.unlabelled_format or settings.format, image_root=settings.images)
    return ImageLabelDataset(pool_table, config.transform(False), labels=False, skip_unreadable=settings.skip_unreadable)


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


SPLIT_FILE = "split.csv"  # image, split: the rows a run trained, validated, calibrated and tested on


def _split_images(splits: DataSplits) -> dict[str, list[str]]:
    """The images of each split a run uses, by the names ``split.csv`` gives them."""
    return {name: list(part.images) for name, part in (("train", splits.train), ("validation", splits.validation),
                                                       ("calibration", splits.calibration), ("test", splits.test))
            if part is not None}


def _write_split(out: Path, splits: DataSplits) -> None:
    rows = [(image, name) for name, images in _split_images(splits).items() for image in images]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([("image", "split"), *rows])
    atomic_write_text(out / SPLIT_FILE, buffer.getvalue())


def _split_rows(path: Path) -> dict[str, list[str]]:
    """A run's ``split.csv``: the images of each split, in the file's order."""
    rows: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            rows.setdefault(row["split"], []).append(row["image"])
    return rows


def _run_split(checkpoint: Path, table: LabelTable, name: str) -> LabelTable:
    """The rows of ``table`` that the run of ``checkpoint`` put in split ``name``."""
    path = checkpoint.parent / SPLIT_FILE
    if not path.is_file():
        raise ValueError(f"split: {table.source} has no split column and {path} is missing (a run of an older "
                         "version?); give --labels a file with a split column, or the test file itself")
    wanted = set(_split_rows(path).get(name, []))
    if not wanted:
        raise ValueError(f"split: the run in {checkpoint.parent} has no {name!r} split (its {path.name} lists train, "
                         "validation, calibration and test)")
    rows = np.array([image in wanted for image in table.images])
    if rows.sum() != len(wanted):
        raise ValueError(f"split: {rows.sum()} of the run's {len(wanted)} {name} images are in {table.source}; is it "
                         "the file the run was trained on?")
    return table.subset(rows)


def evaluate(settings: EvaluateConfig) -> dict[str, float]:
    """``elta evaluate``: metrics of a checkpoint on a label file (or one split of it), with
    the checkpoint's own evaluation transform; ``--out`` also gets ``predictions.csv`` and
    ``predictions.png``. Without ``--labels`` the run's own label file and its test split."""
    with _threads(settings):
        return _evaluate(settings)


def _evaluate(settings: EvaluateConfig) -> dict[str, float]:
    wrapper, config = load_checkpoint(settings.checkpoint, ddp.init_from_environment(_device(settings.device)))
    checkpoint = Path(settings.checkpoint)
    if settings.labels is None:
        manifest = checkpoint.parent / "manifest.json"
        try:
            run = json.loads(manifest.read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"labels: give --labels and --format; {manifest} (the run's settings) cannot be "
                             "read") from None
        # the run's test split: its --test-labels file where it had one, else the test rows of its file
        test_file = run.get("test_labels") if settings.split in (None, "test") else None
        settings = dataclasses.replace(settings, labels=test_file or run["labels"], format=run["format"],
                                       images=settings.images or run.get("images"),
                                       split=None if test_file else settings.split or "test",
                                       **{k: run[k] for k in ("image_column", "score_column", "split_column")
                                          if k in run}, scale=tuple(run.get("scale", settings.scale)))
    elif settings.format is None:
        raise ValueError("format: give --format with --labels")
    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    if settings.split:
        table = table.where_split(settings.split) if table.split is not None else _run_split(checkpoint, table,
                                                                                              settings.split)
    data = ImageLabelDataset(table, config.transform(False), skip_unreadable=settings.skip_unreadable)
    evaluation = evaluate_model(wrapper, data, table, settings.batch_size, _progress(settings),
                                loader_kwargs=loader_options(settings.workers, device_of(wrapper.model), settings.threads))
    result = dict(evaluation.metrics, skipped_images=float(len(data.skipped)))
    if settings.out and ddp.is_main():
        out = _output_folder(settings.out)
        _write_metrics(result, out, "evaluation")
        write_predictions(evaluation, out, f"{Path(settings.checkpoint).name} on {Path(settings.labels).name}")
    return result


def pseudo_label(settings: PseudoLabelConfig) -> dict[str, Any]:
    """``elta pseudo-label``: grid search on a labelled calibration file, then pseudo-labels
    for an unlabelled pool, written as ``pseudo_labels.csv`` (image, score, p_1..p_C)."""
    with _threads(settings):
        return _pseudo_label(settings)


def _pseudo_label(settings: PseudoLabelConfig) -> dict[str, Any]:
    device = ddp.init_from_environment(_device(settings.device))
    wrapper, config = load_checkpoint(settings.checkpoint, device)
    if config.head_type == "sigmoid":
        raise ValueError(f"checkpoint: {settings.checkpoint} has a sigmoid (score) head; APDS needs a distribution head")
    calibration = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    calibration_data = ImageLabelDataset(calibration, config.transform(False), skip_unreadable=settings.skip_unreadable)
    options = loader_options(settings.workers, device, settings.threads)
    logits, _ = predict_dataset(wrapper, calibration_data, batch_size=settings.batch_size, progress=_progress(settings),
                                desc="calibration", loader_kwargs=options)
    pool = unlabelled_pool(settings, calibration, config)
    pool_logits, _ = predict_dataset(wrapper, pool, batch_size=settings.batch_size, progress=_progress(settings),
                                     desc="unlabelled", loader_kwargs=options)
    true = torch.as_tensor(calibration.scores[list(calibration_data.rows)], dtype=torch.float32)

    def choose_and_write() -> dict[str, Any]:  # once, on rank 0 under torchrun
        chosen = pseudo_label_round(logits, true, pool_logits, betas=settings.betas, thresholds=settings.thresholds,
                                    bin_values=config.bin_values, min_selected=settings.min_selected,
                                    pseudo_label=settings.pseudo_label, score_scale=wrapper.score_scale)
        out = _output_folder(settings.out)
        atomic_write_json(out / "grid.json", chosen.grid.as_dict())
        atomic_write_text(out / "grid.md", chosen.grid.to_markdown() + "\n")
        values = torch.as_tensor(config.bin_values)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "score"] + [f"p_{v:g}" for v in config.bin_values])
        for index, label in zip(chosen.indices.tolist(), chosen.labels):
            writer.writerow([pool.table.images[pool.rows[index]], f"{float(label @ values):.4f}"]
                            + [f"{p:.6f}" for p in label.tolist()])
        path = atomic_write_text(out / "pseudo_labels.csv", buffer.getvalue())
        return {"grid": chosen.grid, "num_selected": chosen.num_kept, "pool": len(pool), "path": str(path),
                "indices": chosen.indices}

    return ddp.on_main(choose_and_write)
