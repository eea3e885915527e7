"""``elta prepare``: the images of a label file resized once to the recipe's square (the
authors resize to 300 x 300 first), so that later epochs never decode full-size photos.

The resize is the training transform's own first step (torchvision's ``Resize`` on a PIL
image), and resizing an image that already has the target size is the identity, so a
run on the prepared folder sees the same pixels up to JPEG re-encoding (``--quality``;
PNG stays lossless). Workers are a torch ``DataLoader``'s; each file is written
atomically, so a killed run resumes where it stopped. The folder's ``manifest.json``
records the size and quality and refuses another setting.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from elta_core.adapters.torch.data import UnreadableImageError, open_image
from elta_core.adapters.torch.loop import progress_bar
from elta_core.data.labels import LabelTable
from elta_core.io import atomic_write, remove_stale_temporaries
from elta_core.run_state import RunManifest

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


def _current(target: Path, source: str) -> bool:
    """A prepared copy that is there and newer than its source (a source changed since it
    was copied is prepared again)."""
    try:
        return target.stat().st_mtime_ns >= Path(source).stat().st_mtime_ns
    except OSError:
        return False


class _Resizer(Dataset):
    """Item k: resize image k and write it; returns "" or, for an unreadable image, why."""

    def __init__(self, images: list[str], targets: list[Path], size: int, quality: int):
        self.images, self.targets, self.size, self.quality = images, targets, size, quality

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int) -> str:
        from torchvision.transforms import functional

        target = self.targets[k]
        if _current(target, self.images[k]):  # written atomically by an earlier run, from this very source
            return ""
        try:
            image = functional.resize(open_image(self.images[k]), [self.size, self.size])
        except UnreadableImageError as error:
            return str(error)
        buffer = io.BytesIO()
        if target.suffix.lower() in (".jpg", ".jpeg"):
            image.save(buffer, format="JPEG", quality=self.quality)
        else:
            image.save(buffer, format=image.format or "PNG")
        atomic_write(target, lambda stream: stream.write(buffer.getvalue()))
        return ""


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
    done_before = sum(_current(t, image) for t, image in zip(targets, table.images))
    loader = DataLoader(_Resizer(list(table.images), targets, size, quality), batch_size=None, num_workers=workers)
    failures = []
    for error in progress_bar(loader, progress, total=len(targets), desc="prepare", unit="image"):
        if error:
            failures.append(error)
    if failures and len(failures) == len(targets):
        raise ValueError(f"images: none of the {len(targets)} images could be read, e.g. {failures[0]}; is --images "
                         "the folder their names are relative to?")
    return {"images": len(targets), "written": len(targets) - done_before - len(failures),
            "already_there": done_before, "unreadable": failures, "folder": str(folder)}
