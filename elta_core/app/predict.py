"""Scoring images that have no labels: :func:`load_model` (a checkpoint's model with the
evaluation preprocessing it was trained with) and ``elta predict`` (a folder of images,
or a label file's image list, to a CSV of predicted scores)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from elta_core import losses
from elta_core.adapters.torch.data import UnreadableImageError, image_files, open_image
from elta_core.adapters.torch.loop import progress_bar
from elta_core.app.config import PredictConfig
from elta_core.app.run.model import RunConfig, load_checkpoint
from elta_core.app.run.reports import check_names_writable
from elta_core.app.run.resources import device_named, loader_options, torch_threads
from elta_core.data.labels import load_labels
from elta_core.io import atomic_write


class Scorer(nn.Module):
    """A trained aesthetics model: ``scorer(x)`` is the predicted mean score of each image
    (N,) on its training labels' scale, or one score for one unbatched (C, H, W) image;
    :meth:`distribution` the predicted probabilities over the rating levels (None for a
    sigmoid head, which predicts the score alone)."""

    def __init__(self, network: nn.Module, config: RunConfig):
        super().__init__()
        self.network, self.config = network, config
        self.register_buffer("bin_values", torch.tensor(config.bin_values, dtype=torch.float32))

    @property
    def predicts_distribution(self) -> bool:
        return self.config.head_type != "sigmoid"

    def _batched(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if x.ndim not in (3, 4):
            raise ValueError(f"x: expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(x.shape)}")
        return (x[None], True) if x.ndim == 3 else (x, False)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scores and the distributions (None for a sigmoid head), from one forward."""
        batch, single = self._batched(x)
        out = self.network(batch).float()
        if not self.predicts_distribution:
            scores, probabilities = out.reshape(-1), None
        else:
            probabilities = torch.softmax(out, dim=1)
            scores = probabilities @ self.bin_values
        return (scores[0], None if probabilities is None else probabilities[0]) if single else (scores, probabilities)

    def distribution(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.predict(x)[1] if self.predicts_distribution else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)[0]


def load_model(checkpoint: str | Path, device: str | torch.device | None = None) -> tuple[Scorer, Callable]:
    """The model of an ``elta train`` checkpoint, in eval mode on ``device`` (default: a
    CUDA device where there is one), and the transform its checkpoint evaluates with (a
    PIL image to a tensor): ``scorer(transform(image))`` is the image's predicted score.
    ``elta export`` writes a model that loads without elta_core."""
    device = device if isinstance(device, torch.device) else device_named(device)
    wrapper, config = load_checkpoint(str(checkpoint), device)
    return Scorer(wrapper.model, config).to(device).eval(), config.transform(False)


class _Images(Dataset):
    """``(index, image tensor, readable)`` for each path; an unreadable image is a zero
    tensor marked unreadable where ``skip_unreadable``, else an error naming it."""

    def __init__(self, paths: list[str], transform: Callable, size: int, skip_unreadable: bool):
        self.paths, self.transform, self.size, self.skip = paths, transform, size, skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(open_image(self.paths[index])), True
        except UnreadableImageError:
            if not self.skip:
                raise
            return index, torch.zeros(3, self.size, self.size), False


def images_to_score(settings: PredictConfig) -> tuple[list[str], list[str]]:
    """The image paths to score and the names the CSV gives them: a folder's images
    (recursively, sorted; named relative to it) or a label file's images (as it names
    them)."""
    if settings.labels:
        settings.check_format_given()
        table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
        root = settings.images
        return list(table.images), [str(Path(p).relative_to(root)) if root and Path(p).is_relative_to(root) else p
                                    for p in table.images]
    if not settings.images:
        raise ValueError("images: give a folder of images (--images) or a label file (--labels)")
    paths = image_files(settings.images)
    if not paths:
        raise ValueError(f"images: no images in {settings.images} (looked for .jpg, .png, ... recursively)")
    return paths, [str(Path(p).relative_to(settings.images)) for p in paths]


def predict(settings: PredictConfig) -> dict[str, Any]:
    """``elta predict``: every image's predicted score (and, for a distribution head, the
    standard deviation and the distribution) to ``--out``, a CSV written batch by batch to
    a temporary file that replaces ``--out`` when every image is scored (memory does not
    grow with the number of images). Returns the counts and the images skipped."""
    with torch_threads(settings):
        device = device_named(settings.device)
        scorer, transform = load_model(settings.checkpoint, device)
        paths, names = images_to_score(settings)
        check_names_writable(names, "images")
        data = _Images(paths, transform, scorer.config.image_size, settings.skip_unreadable)
        loader = DataLoader(data, batch_size=settings.batch_size,
                            **loader_options(settings.workers, device, settings.threads))
        skipped: list[str] = []
        values = scorer.config.bin_values

        def write(stream) -> None:
            text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(["image", "score"] + (["std", *(f"p_{v:g}" for v in values)]
                                                  if scorer.predicts_distribution else []))
            with torch.no_grad():
                for rows, x, readable in progress_bar(loader, not settings.quiet, desc="predict", unit="batch"):
                    skipped.extend(names[k] for k in rows[~readable].tolist())
                    rows, x = rows[readable], x[readable].to(device)
                    if not len(rows):
                        continue
                    scores, distribution = (part.cpu() if part is not None else None for part in scorer.predict(x))
                    extras = [[]] * len(rows)  # a sigmoid head: the score alone
                    if distribution is not None:  # read once per batch, not per row from the device
                        spread = losses.score_std(distribution.double(), values)
                        extras = [[f"{s:.6g}", *(f"{p:.6f}" for p in ps)]
                                  for s, ps in zip(spread.tolist(), distribution.tolist())]
                    for row, score, extra in zip(rows.tolist(), scores.tolist(), extras):
                        writer.writerow([names[row], f"{score:.6g}", *extra])
                    text.flush()
            text.detach()

        path = atomic_write(settings.out, write)
    return {"path": str(path), "scored": len(paths) - len(skipped), "skipped": skipped}
