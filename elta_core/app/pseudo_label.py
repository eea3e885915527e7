"""``elta pseudo-label``: APDS's grid search on a labelled calibration file, then
pseudo-labels for an unlabelled pool, from a checkpoint."""

from __future__ import annotations

import csv
import io
from typing import Any

import torch

from elta_core.adapters.torch import distributed as ddp
from elta_core.adapters.torch.data import ImageLabelDataset
from elta_core.adapters.torch.prediction import predict_dataset
from elta_core.app.config import PseudoLabelConfig
from elta_core.app.run.model import check_rating_scale, load_checkpoint
from elta_core.app.run.reports import check_names_writable
from elta_core.app.run.resources import device_named, loader_options, output_folder, shows_progress, torch_threads
from elta_core.app.run.round2 import unlabelled_pool
from elta_core.data.labels import load_labels
from elta_core.io import atomic_write_json, atomic_write_text
from elta_core.pseudo_labels import pseudo_label_round


def pseudo_label(settings: PseudoLabelConfig) -> dict[str, Any]:
    """``elta pseudo-label``: grid search on a labelled calibration file, then pseudo-labels
    for an unlabelled pool, written as ``pseudo_labels.csv`` (image, score, p_1..p_C)."""
    with torch_threads(settings):
        return _pseudo_label(settings)


def _pseudo_label(settings: PseudoLabelConfig) -> dict[str, Any]:
    device = ddp.init_from_environment(device_named(settings.device))
    wrapper, config = load_checkpoint(settings.checkpoint, device)
    if config.head_type == "sigmoid":
        raise ValueError(f"checkpoint: {settings.checkpoint} has a sigmoid (score) head; APDS needs a distribution head")
    out = output_folder(settings.out)  # a --out that is a file is refused before the predictions
    calibration = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    check_rating_scale(config, calibration, settings.checkpoint)
    pool = unlabelled_pool(settings, calibration, config)
    check_names_writable(pool.table.images, "unlabelled")  # before both predictions, not after
    calibration_data = ImageLabelDataset(calibration, config.transform(False), skip_unreadable=settings.skip_unreadable)
    options = loader_options(settings.workers, device, settings.threads)
    logits, _ = predict_dataset(wrapper, calibration_data, batch_size=settings.batch_size, progress=shows_progress(settings),
                                desc="calibration", loader_kwargs=options)
    pool_logits, _ = predict_dataset(wrapper, pool, batch_size=settings.batch_size, progress=shows_progress(settings),
                                     desc="unlabelled", loader_kwargs=options)
    true = torch.as_tensor(calibration.scores[list(calibration_data.rows)], dtype=torch.float32)

    def choose_and_write() -> dict[str, Any]:  # once, on rank 0 under torchrun
        chosen = pseudo_label_round(logits, true, pool_logits, betas=settings.betas, thresholds=settings.thresholds,
                                    bin_values=config.bin_values, min_selected=settings.min_selected,
                                    pseudo_label=settings.pseudo_label, score_scale=wrapper.score_scale)
        atomic_write_json(out / "grid.json", chosen.grid.as_dict())
        atomic_write_text(out / "grid.md", chosen.grid.to_markdown() + "\n")
        values = torch.as_tensor(config.bin_values)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "score"] + [f"p_{v:g}" for v in config.bin_values])
        for index, label in zip(chosen.indices.tolist(), chosen.labels):
            writer.writerow([pool.table.images[pool.rows[index]], f"{float(label @ values):.4f}"]
                            + [f"{p:.6f}" for p in label.tolist()])
        path = atomic_write_text(out / "pseudo_labels.csv", buffer.getvalue())
        return {"grid": chosen.grid, "num_selected": chosen.num_kept, "pool": len(pool), "path": str(path),
                "indices": chosen.indices}

    return ddp.on_main(choose_and_write)
