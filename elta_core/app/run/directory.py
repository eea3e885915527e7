"""The run directory ``--out``: its identity (the settings and inputs recorded in its
manifest), the rules by which ``--resume`` may continue it, and the lock that keeps it to
one run at a time."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch.checkpoints import Checkpointer, Generators
from elta_core.app.config import TrainConfig
from elta_core.app.options import may_change_on_resume, run_identity
from elta_core.app.run.resources import check_out_folder
from elta_core.app.run.splits import SPLIT_FILE
from elta_core.run_state import RunManifest, StaleStateError, fingerprint, sha256_of_file

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# What a run recorded before an option existed did, so that it resumes under that value.
SETTINGS_BEFORE_RECORDED = {"lr_schedule": "constant", "pretrained": None, "peer_settings": [],
                            "evaluate_on": "test"}


def run_checkpoints(manifest: RunManifest, generators: Generators = list) -> Checkpointer:
    """The run's checkpoints in its manifest: ``checkpoint.pt`` (round 1's last state; after
    an APDS round, the round-2 model with that state) and ``best.pt`` (``--select-best``)."""
    return Checkpointer(manifest.folder, generators, file_names={"checkpoint": CHECKPOINT, "best": BEST},
                        manifest=manifest)


def open_run(settings: TrainConfig, world_size: int = 1, images: list[str] | None = None) -> RunManifest:
    """The run directory ``--out``: a new or empty one, or with ``--resume`` one whose
    manifest matches this run's settings and inputs (``--epochs`` may change)."""
    out = check_out_folder(settings.out)
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


def open_run_everywhere(settings: TrainConfig, images: list[str] | None = None) -> RunManifest:
    """Rank 0 checks and records the run directory (an error stops every rank); the other
    ranks of a DDP run read the same directory, which must be shared, and never write."""
    opened: dict[str, RunManifest] = {}

    def check_and_record() -> None:  # returns nothing: the manifest is not sent to the other ranks
        opened["manifest"] = open_run(settings, ddp.world_size(), images)

    ddp.on_main(check_and_record)
    return opened.get("manifest") or RunManifest(settings.out, writer=False)


@contextlib.contextmanager
def run_lock(out: str) -> Iterator[None]:
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
    folder = check_out_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    _LOCKS_HELD.append(handle)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"out: another elta train is running in {folder}; wait for it to finish (then "
                             "--resume), or give another --out") from None
        yield
    finally:
        if handle in _LOCKS_HELD:  # (a fork has dropped its copy already)
            _LOCKS_HELD.remove(handle)
            os.close(handle)  # closing releases the lock


# The run locks this process holds. A fork (a DataLoader worker) inherits their descriptors,
# and a flock lives while any copy is open: a worker that outlived a killed run kept --out
# locked. The child closes its copies at once.
_LOCKS_HELD: list[int] = []


def _drop_inherited_locks() -> None:
    for handle in _LOCKS_HELD:
        try:
            os.close(handle)
        except OSError:
            pass
    _LOCKS_HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


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
