"""Checkpoint files of the torch adapter: written atomically (never half a file), on rank
0 alone under DDP and then recorded in the run's manifest by every rank, and read back
with one error type (:class:`~elta_core.run_state.StaleStateError`, a ``ValueError``)
that names the file and what to do."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from elta_core.adapters.torch.distributed import barrier, is_main
from elta_core.io import atomic_write, atomic_write_json
from elta_core.run_state import RunManifest, StaleStateError


def atomic_save(obj: Any, path: str | os.PathLike, digest: Any = None) -> Path:
    """``torch.save`` through :func:`elta_core.io.atomic_write`: never half a file;
    ``digest`` (a ``hashlib`` object) gets the bytes written."""
    return atomic_write(path, lambda stream: torch.save(obj, stream), digest=digest)


def save_and_record(state: Any, path: Path, manifest: RunManifest, stage: str, key: str) -> None:
    """Rank 0 writes ``state`` atomically (JSON for a ``.json`` path, else ``torch.save``);
    every rank records it in ``manifest`` once it is there."""
    digest = None
    if is_main():
        if path.suffix == ".json":
            atomic_write_json(path, state)
        else:
            digest = hashlib.sha256()  # hashed as it is written: a checkpoint is not read back to hash it
            atomic_save(state, path, digest)
    barrier()
    manifest.record(stage, path, key, digest.hexdigest() if digest is not None else None)


def load_file(path: str | os.PathLike, map_location: Any = "cpu", *, name: str | None = None,
              what: str = "delete it to recompute it, or restore it") -> Any:
    """A ``.json`` or ``torch.save`` file written by :func:`save_and_record`, tensors and
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
