"""A computation of several stages saved in one folder, each reused only while it is
current: its file undamaged and recorded in the folder's ``manifest.json``
(:mod:`elta_core.run_state`) under the key of the settings, data and earlier stages it
was computed from. Each file carries the random generators' state, so that a resumed
run draws what the uninterrupted one would."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from elta_core.adapters.torch import rng
from elta_core.adapters.torch.checkpoints import load_file, save_and_record
from elta_core.adapters.torch.distributed import is_main
from elta_core.run_state import RunManifest


class StageStore:
    """The stages of ``workdir``: ``stage.pt`` (or ``file_names[stage]``) each;
    ``generators()`` gives the generators whose state each stage keeps."""

    def __init__(self, workdir: str | Path, generators: Callable[[], list[torch.Generator | None]],
                 file_names: dict[str, str] | None = None):
        self.workdir, self.generators, self.file_names = Path(workdir), generators, dict(file_names or {})
        self._manifest: RunManifest | None = None

    @property
    def manifest(self) -> RunManifest:
        if self._manifest is None:  # read on first use: a folder made by another rank may not be there before
            self._manifest = RunManifest(self.workdir, writer=is_main())
        return self._manifest

    def path(self, stage: str) -> Path:
        return self.workdir / self.file_names.get(stage, f"{stage}.pt")

    def done(self, stage: str) -> bool:
        """Whether ``stage``'s file is there, recorded in the manifest (it is reused only if
        it also matches this run's settings and inputs)."""
        return self.path(stage).exists() and stage in self.manifest.data["stages"]

    def save(self, stage: str, record: Any, key: str, path: Path | None = None) -> None:
        save_and_record(record, path or self.path(stage), self.manifest, stage, key)

    def load(self, stage: str, path: Path | None = None) -> Any:
        return load_file(path or self.path(stage), what="delete it to recompute this stage, or restore it")

    def cached(self, stage: str, key: str, compute: Callable[[], dict], restore: Callable[[dict], Any]) -> Any:
        """The stage's record: loaded when the manifest says it is current (its RNG
        snapshot restored, so that what follows draws the same numbers as an
        uninterrupted run), else computed, saved with a snapshot and recorded."""
        if self.manifest.reusable(stage, self.path(stage), key):
            record = self.load(stage)
            rng.restore(record["rng"], self.generators())
            return restore(record)
        self.manifest.forget(stage)
        record = compute()
        record["rng"] = rng.snapshot(self.generators())
        self.save(stage, record, key)
        return restore(record)
