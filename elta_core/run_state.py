"""Run directories that never reuse state that no longer matches its inputs.

A run directory holds ``manifest.json``: the library version, the run's configuration,
a fingerprint of each input data set, and for every finished stage the SHA-256 of its
file and the *key* it was computed under. A stage's key hashes its own settings and the
checksums of the files it was computed from, so:

- a stage is reused only when its key is unchanged and its file still has the recorded
  checksum (a damaged or replaced file is an error that names it and says what to do);
- a stage that is recomputed gets a new checksum, which changes the keys of the stages
  computed from it, so they are recomputed too;
- temporary files left by a killed write are removed when the run opens.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from elta_core.io import atomic_write_json, remove_stale_temporaries

__all__ = ["MANIFEST", "RunManifest", "StaleStateError", "fingerprint", "sha256_of_file"]

MANIFEST = "manifest.json"


class StaleStateError(ValueError):
    """A run directory's state does not match what this run was asked to do."""


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(value: Any) -> str:
    """A SHA-256 of ``value``: JSON-able data, NumPy arrays and tensors (their bytes,
    dtype and shape), or sequences of those."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().contiguous().numpy()
    if hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):
        digest.update(f"array:{value.dtype}:{tuple(value.shape)}:".encode())
        digest.update(value.tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq:{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, dict):
        digest.update(f"dict:{len(value)}:".encode())
        for key in sorted(value, key=str):
            digest.update(f"{key}=".encode())
            _feed(digest, value[key])
    else:
        digest.update(json.dumps(value, sort_keys=True, default=repr).encode())
    digest.update(b";")


def _version() -> str:
    from elta_core import __version__

    return __version__


class RunManifest:
    """The manifest of one run directory (created on first use). With ``writer=False`` (the
    other ranks of a DDP run, which share rank 0's directory) it is kept up to date in
    memory and read, never written."""

    def __init__(self, folder: str | os.PathLike, writer: bool = True):
        self.folder = Path(folder)
        self.writer = writer
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder}: exists and is not a directory; give a folder for the run")
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.folder)
        self.path = self.folder / MANIFEST
        self.data = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"library_version": _version(), "config": {}, "inputs": {}, "stages": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
                raise ValueError("not a manifest")
        except (ValueError, UnicodeDecodeError) as error:
            raise StaleStateError(f"{self.path}: damaged ({error}); delete the run directory {self.folder} to "
                                  "start again") from None
        return data

    def save(self) -> None:
        self.data["library_version"] = _version()
        if self.writer:
            atomic_write_json(self.path, self.data)

    @property
    def is_new(self) -> bool:
        return not self.path.exists()

    # -- stages ----------------------------------------------------------------------
    def stage_key(self, stage: str, settings: Any, depends_on: Iterable[str] = ()) -> str:
        """The key of ``stage``: its settings and the checksums of the stages it reads."""
        upstream = {name: self.data["stages"].get(name, {}).get("sha256") for name in depends_on}
        return fingerprint({"stage": stage, "settings": settings, "upstream": upstream})

    def reusable(self, stage: str, file: Path, key: str) -> bool:
        """Whether ``file`` holds ``stage`` computed under ``key``, undamaged. A file with
        another key (or none recorded) is stale: False, and it will be overwritten. A file
        whose checksum differs from the recorded one raises :class:`StaleStateError`."""
        record = self.data["stages"].get(stage)
        if not file.exists() or record is None or record.get("key") != key:
            return False
        if sha256_of_file(file) != record.get("sha256"):
            raise StaleStateError(
                f"{file}: does not match the checksum recorded in {self.path} (the file was damaged, truncated or "
                "replaced); delete it to recompute this stage, or restore the original file"
            )
        return True

    def record(self, stage: str, file: Path, key: str, sha256: str | None = None) -> None:
        """Record ``stage`` as ``file`` under ``key``; ``sha256``: the file's hash, when
        its writer took it on the way (else the file is read)."""
        self.data["stages"][stage] = {"file": file.name, "key": key, "sha256": sha256 or sha256_of_file(file)}
        self.save()

    def forget(self, stage: str) -> None:
        if self.data["stages"].pop(stage, None) is not None:
            self.save()

    # -- whole-run configuration ---------------------------------------------------------
    def check_config(self, config: dict[str, Any], may_change: Iterable[str] = ()) -> list[str]:
        """Compare ``config`` with the recorded one. Items in ``may_change`` are applied
        and returned (to report); any other change raises :class:`StaleStateError` naming
        it. A new manifest records ``config``."""
        recorded = self.data.get("config") or {}
        if not recorded:
            if self.data.get("stages"):  # stages recorded under settings that are gone: they cannot be checked
                raise StaleStateError(f"{self.path}: records finished stages but no settings (was it edited?); its "
                                      "stages cannot be matched to this run: restore the file, or use a new output "
                                      "directory")
            self.data["config"] = dict(config)
            self.save()
            return []
        changed = sorted(k for k in set(config) | set(recorded) if config.get(k) != recorded.get(k))
        refused = [k for k in changed if k not in set(may_change)]
        if refused:
            details = "; ".join(f"{k}: {recorded.get(k)!r} -> {config.get(k)!r}" for k in refused)
            raise StaleStateError(f"{self.folder}: the run was started with another configuration ({details}). "
                                  "Use a new output directory, or rerun with the original settings")
        if changed:
            self.data["config"] = dict(config)
            self.save()
        return changed

    def check_inputs(self, inputs: dict[str, str]) -> None:
        """Compare input fingerprints with the recorded ones; a changed input data set is
        refused, naming it."""
        recorded = self.data.get("inputs") or {}
        changed = [name for name, value in inputs.items() if name in recorded and recorded[name] != value]
        if changed:
            raise StaleStateError(f"{self.folder}: the input data changed since the run started ({', '.join(changed)}); "
                                  "use a new output directory, or restore the original data")
        if any(name not in recorded for name in inputs):
            self.data["inputs"] = {**recorded, **inputs}
            self.save()
