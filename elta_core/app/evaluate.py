"""``elta evaluate``: a checkpoint's metrics on a label file (or one split of it), with the
checkpoint's own evaluation transform."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch.data import ImageLabelDataset
from elta_core.adapters.torch.modules import device_of
from elta_core.app.config import EvaluateConfig
from elta_core.app.run.model import check_rating_scale, load_checkpoint
from elta_core.app.run.reports import evaluate_model, write_metrics, write_predictions
from elta_core.app.run.resources import device_named, loader_options, output_folder, shows_progress, torch_threads
from elta_core.app.run.splits import run_split
from elta_core.data.labels import load_labels


def evaluate(settings: EvaluateConfig) -> dict[str, float]:
    """``elta evaluate``: metrics of a checkpoint on a label file (or one split of it), with
    the checkpoint's own evaluation transform; ``--out`` also gets ``predictions.csv`` and
    ``predictions.png``. Without ``--labels`` the run's own label file and its test split."""
    with torch_threads(settings):
        return _evaluate(settings)


def _evaluate(settings: EvaluateConfig) -> dict[str, float]:
    wrapper, config = load_checkpoint(settings.checkpoint, ddp.init_from_environment(device_named(settings.device)))
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
    else:
        settings.check_format_given()
    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    if settings.split:
        table = table.where_split(settings.split) if table.split is not None else run_split(checkpoint, table,
                                                                                              settings.split)
    check_rating_scale(config, table, settings.checkpoint)
    data = ImageLabelDataset(table, config.transform(False), skip_unreadable=settings.skip_unreadable)
    evaluation = evaluate_model(wrapper, data, table, settings.batch_size, shows_progress(settings),
                                loader_kwargs=loader_options(settings.workers, device_of(wrapper.model), settings.threads))
    result = dict(evaluation.metrics, skipped_images=float(len(data.skipped)))
    if settings.out and ddp.is_main():
        out = output_folder(settings.out)
        write_metrics(result, out, "evaluation")
        write_predictions(evaluation, out, f"{Path(settings.checkpoint).name} on {Path(settings.labels).name}")
    return result
