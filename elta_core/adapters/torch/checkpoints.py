"""Checkpoint files of the torch adapter, in one class for round 1 (``checkpoint.pt``,
``best.pt``), round 2's saved stages and the demo (:class:`Checkpointer`): written
atomically (never half a file), on rank 0 alone under DDP and then recorded in the
folder's manifest (:mod:`elta_core.run_state`) by every rank, reused only while current,
with every rank's random generators' state, and read back with one error type
(:class:`~elta_core.run_state.StaleStateError`, a ``ValueError``) that names the file and
what to do."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from elta_core.adapters.torch import rng
from elta_core.adapters.torch.distributed import barrier, gather_objects, is_main, rank, world_size
from elta_core.io import atomic_write, atomic_write_json
from elta_core.run_state import RunManifest, StaleStateError

Generators = Callable[[], "list[torch.Generator | None]"]


def atomic_save(obj: Any, path: str | os.PathLike, digest: Any = None) -> Path:
    """``torch.save`` through :func:`elta_core.io.atomic_write`: never half a file;
    ``digest`` (a ``hashlib`` object) gets the bytes written."""
    return atomic_write(path, lambda stream: torch.save(obj, stream), digest=digest)


def load_file(path: str | os.PathLike, map_location: Any = "cpu", *, name: str | None = None,
              what: str = "delete it to recompute it, or restore it") -> Any:
    """A ``.json`` or ``torch.save`` file written by a :class:`Checkpointer`, tensors and
    plain values only (``weights_only``); a missing, damaged or unsafe file is a
    ``StaleStateError`` naming it (after ``name``, the argument it came from), and ``what``
    to do."""
    path = Path(path)
    prefix = f"{name}: " if name else ""
    if not path.is_file():
        raise StaleStateError(f"{prefix}no such file: {path}")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        reason = str(error).split("\n")[0][:200]
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds objects other than tensors and numbers, which are not loaded for safety"
        raise StaleStateError(f"{prefix}{path} cannot be read ({type(error).__name__}: {reason}); {what}") from None


class Checkpointer:
    """The checkpoints of ``folder``: ``STAGE.pt`` each (or ``file_names[STAGE]``; a
    ``.json`` name is written as JSON), recorded in the folder's ``manifest.json`` (given,
    or read on first use) under the key of what it was computed from. ``generators()``
    gives the random generators whose state a checkpoint keeps, so that a resumed run
    draws what the uninterrupted one would."""

    def __init__(self, folder: str | Path, generators: Generators = list, *, file_names: dict[str, str] | None = None,
                 manifest: RunManifest | None = None):
        self.folder, self.generators, self.file_names = Path(folder), generators, dict(file_names or {})
        self._manifest = manifest

    @property
    def manifest(self) -> RunManifest:
        if self._manifest is None:  # read on first use: a folder made by another rank may not be there before
            self._manifest = RunManifest(self.folder, writer=is_main())
        return self._manifest

    def path(self, stage: str) -> Path:
        return self.folder / self.file_names.get(stage, f"{stage}.pt")

    def done(self, stage: str) -> bool:
        """Whether ``stage``'s file is there, recorded in the manifest (it is reused only if
        it also matches this run's settings and inputs: :meth:`current`)."""
        return self.path(stage).exists() and stage in self.manifest.data["stages"]

    def current(self, stage: str, key: str, path: Path | None = None) -> bool:
        """Whether ``stage``'s file is recorded under ``key`` and undamaged (its checksum is
        checked)."""
        return self.manifest.reusable(stage, path or self.path(stage), key)

    def save(self, stage: str, state: Any, key: str, path: Path | None = None) -> None:
        """Rank 0 writes ``state`` atomically (hashed as it is written: a checkpoint is not
        read back to hash it); every rank records it in the manifest once it is there."""
        path, digest = path or self.path(stage), None
        if is_main():
            if path.suffix == ".json":
                atomic_write_json(path, state)
            else:
                digest = hashlib.sha256()
                atomic_save(state, path, digest)
        barrier()
        self.manifest.record(stage, path, key, digest.hexdigest() if digest is not None else None)

    def load(self, stage: str, path: Path | None = None) -> Any:
        return load_file(path or self.path(stage), what="delete it to recompute this stage, or restore it")

    def generator_state(self) -> dict[str, Any]:
        """Every rank's generator state (a collective under DDP): ``rng`` is rank 0's,
        ``rng_ranks`` each rank's."""
        snapshots = gather_objects(rng.snapshot(self.generators()))
        return {"rng": snapshots[0], "rng_ranks": snapshots}

    def restore_generators(self, state: dict[str, Any]) -> None:
        """This rank's generators as ``state`` (from :meth:`generator_state`) holds them;
        rank 0's where it was saved under another number of processes, or by a version
        that kept rank 0's alone."""
        per_rank = state.get("rng_ranks") or [state["rng"]]
        rng.restore(per_rank[rank()] if len(per_rank) == world_size() else state["rng"], self.generators())

    def cached(self, stage: str, key: str, compute: Callable[[], dict], restore: Callable[[dict], Any]) -> Any:
        """The stage's record: loaded when it is :meth:`current` (its generators restored,
        so that what follows draws the same numbers as an uninterrupted run), else
        computed, saved with the generators' state and recorded."""
        if self.current(stage, key):
            record = self.load(stage)
            self.restore_generators(record)
            return restore(record)
        self.manifest.forget(stage)
        record = compute()
        record.update(self.generator_state())
        self.save(stage, record, key)
        return restore(record)
