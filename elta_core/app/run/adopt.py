"""``--round1-from``: round 1 taken from another run directory that trained the same
round 1, so that only the APDS round trains (the way ``elta compare`` shares round 1)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from elta_core.adapters.torch import distributed as ddp
from elta_core.app.config import ROUND2_ONLY, TrainConfig
from elta_core.app.run.directory import CHECKPOINT_KEY, SETTINGS_BEFORE_RECORDED, run_checkpoints
from elta_core.app.run.splits import SPLIT_FILE, DataSplits, read_split, split_images
from elta_core.io import atomic_write
from elta_core.run_state import RunManifest, StaleStateError


def adopt_round1(settings: TrainConfig, manifest: RunManifest, splits: DataSplits) -> None:
    """``--round1-from DIR``: DIR's finished round 1 (``checkpoint.pt``, and ``best.pt``
    under ``--select-best``) becomes this run's, so that only the APDS round trains. It is
    taken only where DIR trained the round 1 this run would (:func:`_check_same_round1`);
    round 1 is then bit-identical (``tests/test_round1_from.py``). A run whose own
    checkpoint is already there resumes it instead."""
    own, key = run_checkpoints(manifest), manifest.stage_key("checkpoint", CHECKPOINT_KEY)
    if own.current("checkpoint", key):
        return
    folder = Path(settings.round1_from)
    donor = run_checkpoints(_check_same_round1(settings, manifest, splits, folder))
    if not donor.current("checkpoint", key):  # hashes it: a damaged file is refused here
        raise ValueError(f"round1_from: {folder} has no finished checkpoint; train it first "
                         f"(elta train --resume --out {folder})")
    state = torch.load(donor.path("checkpoint"), map_location="cpu", weights_only=True, mmap=True)
    trained = int((state.get("resume") or state).get("epoch", 0))
    if trained != settings.epochs:
        raise ValueError(f"round1_from: {folder} has trained {trained} of round 1's {settings.epochs} epochs; "
                         f"finish it first (elta train --resume --out {folder})")
    stages = ["checkpoint"]
    if settings.select_best != "none":
        if not donor.current("best", manifest.stage_key("best", CHECKPOINT_KEY)):
            raise ValueError(f"round1_from: {donor.path('best')} is missing or does not match its run; train "
                             "round 1 here (leave out --round1-from)")
        stages.append("best")
    for stage in stages:
        expected = donor.manifest.data["stages"][stage]["sha256"]
        ddp.on_main(lambda: _copy_verified(donor.path(stage), own.path(stage), expected))  # an error stops every rank
        manifest.record(stage, own.path(stage), manifest.stage_key(stage, CHECKPOINT_KEY), expected)
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
    donor_rows = {} if changed else read_split(folder / SPLIT_FILE, "train round 1 here (leave out --round1-from)")
    if changed or round1_rows(donor_rows) != round1_rows(split_images(splits)):
        what = ", ".join(changed) or f"the training or validation rows of its {SPLIT_FILE}"
        raise StaleStateError(f"round1_from: {folder} trained on other data ({what}); train round 1 here "
                              "(leave out --round1-from), or give a run on this data")
    return donor
