"""``elta prepare``: the images of a label file resized once to the recipe's square (the
authors resize to 300 x 300 first), so that later epochs never decode full-size photos.

The resize is the training transform's own first step (torchvision's ``Resize`` on a PIL
image), and resizing an image that already has the target size is the identity, so a
run on the prepared folder sees the same pixels up to JPEG re-encoding (``--quality``;
PNG stays lossless). Workers are a torch ``DataLoader``'s; each file is written
atomically, so a killed run resumes where it stopped. The folder's ``manifest.json``
records the size and quality and refuses another setting; ``prepared.json`` records each
copy by content (:class:`PreparedRecord`), so a source that changed is prepared again
whatever its modification time says, and ``elta train`` fingerprints a prepared folder
by the content of its copies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from elta_core.adapters.torch.data import UnreadableImageError, open_image
from elta_core.adapters.torch.loop import progress_bar
from elta_core.data.labels import LabelTable
from elta_core.io import atomic_write, atomic_write_json, remove_stale_temporaries
from elta_core.run_state import RunManifest, sha256_of_file

PREPARED = "images"


def relative_name(image: str, root: str | None) -> Path:
    """The image's path under ``root`` (the ``--images`` folder), else its file name."""
    path = Path(image)
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    return Path(path.name)


def _stat(path: str | Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


class PreparedRecord:
    """``OUT/prepared.json``: for each prepared file (by its name under ``OUT/images``), the
    SHA-256 of the source it was made from and of the bytes written, and the size and
    modification time of both when it was written. A copy is current while both stats
    match; a source whose stat changed is read again and its content decides. It is
    rewritten atomically every few seconds and when ``prepare`` stops, so a killed run
    loses at most its last seconds of records (those copies are made again)."""

    FILE = "prepared.json"
    FLUSH_SECONDS = 5.0

    def __init__(self, out: Path):
        self.path = out / self.FILE
        self.files: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.files = dict(json.loads(self.path.read_text(encoding="utf-8"))["files"])
            except (ValueError, KeyError, TypeError):
                self.files = {}  # damaged: every copy is checked against its source again
        self._flushed = time.monotonic()

    def update(self, name: str, entry: dict[str, Any]) -> None:
        self.files[name] = entry
        if time.monotonic() - self._flushed > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        atomic_write_json(self.path, {"version": 1, "files": self.files})
        self._flushed = time.monotonic()


def recorded_contents(images_root: str | None) -> dict[str, dict[str, Any]]:
    """The records of ``images_root`` when it is a folder ``elta prepare`` wrote (an
    ``images`` folder beside a ``prepared.json``), by absolute path; else empty."""
    if not images_root or Path(images_root).name != PREPARED:
        return {}
    path = Path(images_root).parent / PreparedRecord.FILE
    if not path.is_file():
        return {}
    folder = Path(images_root).resolve()
    return {str(folder / name): entry for name, entry in PreparedRecord(path.parent).files.items()}


def copy_as_recorded(record: dict[str, Any] | None, target: Path) -> bool:
    """Whether the prepared copy ``target`` has the stat ``record`` gave it (no read)."""
    return record is not None and record.get("stat") == _stat(target) is not None


class _Resizer(Dataset):
    """Item k: resize image k and write it; returns why it could not (or ""), the new
    record of its copy (None when the old one stands) and whether it wrote the copy."""

    def __init__(self, images: list[str], targets: list[Path], records: list[dict | None], size: int, quality: int):
        self.images, self.targets, self.records, self.size, self.quality = images, targets, records, size, quality

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> tuple[str, dict[str, Any] | None, bool]:
        from torchvision.transforms import functional

        source, target, record = self.images[k], self.targets[k], self.records[k]
        source_stat, intact = _stat(source), copy_as_recorded(record, target)
        if intact and record.get("source_stat") == source_stat:
            return "", None, False
        try:
            source_sha256 = sha256_of_file(source)
        except OSError:
            source_sha256 = None  # open_image names the problem
        if intact and source_sha256 is not None and record.get("source_sha256") == source_sha256:
            return "", {**record, "source_stat": source_stat}, False  # touched, same content: the copy stands
        try:
            image = functional.resize(open_image(source), [self.size, self.size])
        except UnreadableImageError as error:
            return str(error), None, False
        buffer = io.BytesIO()
        if target.suffix.lower() in (".jpg", ".jpeg"):
            image.save(buffer, format="JPEG", quality=self.quality)
        else:
            image.save(buffer, format=image.format or "PNG")
        data = buffer.getvalue()
        atomic_write(target, lambda stream: stream.write(data))
        return "", {"source_sha256": source_sha256, "source_stat": source_stat,
                    "sha256": hashlib.sha256(data).hexdigest(), "stat": _stat(target)}, True


def prepare(table: LabelTable, images_root: str | None, out: str | Path, size: int, *, quality: int = 95,
            workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Write every image of ``table`` resized to ``size`` x ``size`` under ``out/images``,
    under its name relative to ``images_root``. Returns counts and the folder to pass as
    ``--images``."""
    if not 8 <= size <= 8192:
        raise ValueError(f"size: expected a side in pixels between 8 and 8192, got {size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality: expected a JPEG quality in 1..100, got {quality}")
    out = Path(out)
    manifest = RunManifest(out)
    manifest.check_config({"size": size, "quality": quality})
    folder = out / PREPARED
    targets = [folder / relative_name(image, images_root) for image in table.images]
    same = next((image for image, target in zip(table.images, targets)
                 if target.exists() and target.resolve() == Path(image).resolve()), None)
    if same is not None:
        raise ValueError(f"out: {folder} is where the images themselves are (e.g. {same}); give --out another folder, "
                         "or the resized copies would overwrite the originals")
    if len(set(targets)) != len(targets):
        raise ValueError("images: two images of the label file map to the same prepared file; give --images, the "
                         "folder their names are relative to")
    for parent in {t.parent for t in targets}:
        remove_stale_temporaries(parent)  # what a killed run was writing
    record = PreparedRecord(out)
    names = [t.relative_to(folder).as_posix() for t in targets]
    entries = [record.files.get(name) for name in names]
    done_before = written = 0
    loader = DataLoader(_Resizer(list(table.images), targets, entries, size, quality), batch_size=None,
                        num_workers=workers)
    failures = []
    try:
        for name, (error, entry, wrote) in zip(names, progress_bar(loader, progress, total=len(targets), desc="prepare",
                                                            unit="image")):
            if error:
                failures.append(error)
            elif wrote:
                written += 1
            else:
                done_before += 1
            if entry is not None:
                record.update(name, entry)
    finally:
        record.flush()
    if failures and len(failures) == len(targets):
        raise ValueError(f"images: none of the {len(targets)} images could be read, e.g. {failures[0]}; is --images "
                         "the folder their names are relative to?")
    return {"images": len(targets), "written": written, "already_there": done_before, "unreadable": failures, "folder": str(folder)}
