"""What a run reports: metrics as JSON (no NaN: null and a list of the undefined ones),
CSV and text, and an evaluation's per-image ``predictions.csv`` and ``predictions.png``."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import torch

from elta_core import losses as core_losses
from elta_core import metrics
from elta_core.adapters.torch import ELTAWrapper
from elta_core.adapters.torch.data import ImageLabelDataset
from elta_core.adapters.torch.prediction import predict_dataset
from elta_core.data.labels import LabelTable
from elta_core.io import atomic_write_json, atomic_write_text

UNDEFINED = "undefined"  # a metric that is not a number (PLCC/SRCC of constant predictions), never NaN


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if math.isfinite(v) else UNDEFINED) if isinstance(v, float) else v
                         for k, v in row.items()})
    return buffer.getvalue()


def json_ready(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with every non-finite number as null, and their names under
    ``"undefined_metrics"`` (JSON has no NaN, and a NaN is never reported as a number)."""
    undefined = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    ready = {k: (None if k in undefined else v) for k, v in result.items()}
    if undefined:
        ready["undefined_metrics"] = undefined
    return ready


def write_metrics(result: dict[str, Any], out: Path, stem: str) -> None:
    atomic_write_json(out / f"{stem}.json", json_ready(result))
    atomic_write_text(out / f"{stem}.csv", csv_text([result]))


SMALL_TAIL = 30  # fewer images than this in a tail make its L or H vary a lot from one split to the next


def format_metrics(result: dict[str, float]) -> str:
    names = [("plcc", "P (PLCC)"), ("srcc", "S (SRCC)"), ("accuracy", "accuracy"), ("mse", "MSE"),
             ("mae_low", "L (low MAE)"), ("mae_medium", "M (medium MAE)"), ("mae_high", "H (high MAE)")]
    shown = lambda v: f"{v:.4f}" if math.isfinite(v) else f"{UNDEFINED} (constant predictions?)"  # noqa: E731
    lines = [f"{label:>15}: {shown(result[key])}" for key, label in names]
    if "tail_images" in result:
        tail, total = int(result["tail_images"]), int(result["num_images"])
        lines.append(f"{'tails':>15}: L and H over {tail} images each (the low and high 20 % of {total})")
        if tail < SMALL_TAIL:
            lines.append(f"warning: a tail of {tail} images (fewer than {SMALL_TAIL}) gives an L and H that vary a lot "
                         "from one split to another; evaluate on a larger test set before reading them")
    return "\n".join(lines)


class Evaluation(NamedTuple):
    metrics: dict[str, float]
    predictions: str  # predictions.csv: image, true score, predicted score, predicted distribution, segment
    true: np.ndarray
    predicted: np.ndarray


def evaluate_model(wrapper: ELTAWrapper, dataset: ImageLabelDataset, table: LabelTable, batch_size: int,
                   progress: bool, desc: str = "evaluate", loader_kwargs: dict | None = None) -> Evaluation:
    """Metrics of the model on ``dataset`` (rows of ``table``), and its per-image predictions."""
    if len(dataset) < 2:
        raise ValueError(f"labels: {len(dataset)} image(s) to evaluate; PLCC and SRCC need at least 2")
    outputs, _ = predict_dataset(wrapper, dataset, batch_size=batch_size, progress=progress, desc=desc, raw=True,
                                 loader_kwargs=loader_kwargs)
    kind = wrapper.output_kind(outputs)
    predicted = core_losses.output_scores(outputs, kind, table.bin_values).double().numpy()
    rows = list(dataset.rows)
    true = table.scores[rows]
    low, high = table.scale
    result = metrics.evaluate(predicted, true, threshold=low + (high - low) * 4 / 9)
    result["num_images"] = float(len(true))
    result["tail_images"] = float(metrics.segment_sizes(len(true))[0])
    segments = metrics.segments(true)
    header = ["image", "true_score", "predicted_score"]
    distributions = None
    if kind != "score":
        distributions = (outputs if kind == "probs" else torch.softmax(outputs.double(), dim=1)).numpy()
        header += [f"p_{v:g}" for v in table.bin_values]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header + ["segment"])
    for k, row in enumerate(rows):
        extra = [f"{p:.6f}" for p in distributions[k]] if distributions is not None else []
        writer.writerow([table.images[row], f"{true[k]:.6g}", f"{predicted[k]:.6g}", *extra, segments[k]])
    return Evaluation(result, buffer.getvalue(), true, predicted)


def write_predictions(evaluation: Evaluation, out: Path, title: str) -> None:
    """``predictions.csv`` and, where matplotlib is installed, ``predictions.png``: predicted
    against true scores with the low and high 20 % shaded, L, M, H and P in it."""
    atomic_write_text(out / "predictions.csv", evaluation.predictions)
    try:
        from elta_core.app.plotting import predicted_against_true, pyplot, save_png

        fig, axis = pyplot().subplots(figsize=(6, 5.5))
    except ImportError:
        print('predictions.png not written: pip install "elta-core[plot]" for the picture')
        return
    predicted_against_true(axis, evaluation.true, [evaluation.predicted], title)
    fig.tight_layout()
    save_png(fig, out / "predictions.png")


def check_names_writable(names: Iterable[str], argument: str) -> None:
    """Refuse, before any prediction, an image whose file name is not UTF-8 (Python holds
    its undecodable bytes as surrogates): a CSV could not name it."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{argument}: the file name {os.fsencode(name)!r} is not UTF-8, so the CSV of results "
                             "could not name it; rename it (e.g. convmv -f latin1 -t utf8 --notest), or move it "
                             "out of the folder") from None
