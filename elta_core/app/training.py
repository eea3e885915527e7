"""What ``elta train``, ``elta evaluate`` and ``elta pseudo-label`` do, on real datasets.

A torchvision backbone gets a C-level distribution head (C = the dataset's levels: 10,
or 9 for PARA), is trained with TFA / FLSA switched on by flags, checkpointed every epoch
(atomically; ``--resume`` continues), and evaluated with :mod:`elta_core.metrics`,
written as JSON and CSV. ``--apds`` adds one self-training round.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from elta_core import apds, metrics
from elta_core.adapters.torch import ELTAWrapper, SelfTraining, fit, predict
from elta_core.adapters.torch.data import ImageLabelDataset, image_files
from elta_core.adapters.torch.modules import device_of
from elta_core.adapters.torch.self_training import atomic_save
from elta_core.data.labels import LabelTable, load_labels
from elta_core.adapters.torch import rng
from elta_core.app.cli import csv_options
from elta_core.io import atomic_write_json, atomic_write_text
from elta_core.pseudo_labels import pseudo_label_round
from elta_core.run_state import RunManifest, fingerprint, sha256_of_file

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunConfig:
    backbone: str
    num_bins: int
    bin_values: list[float]
    scale: list[float]
    image_size: int
    head: str


def default_head(model: nn.Module) -> str:
    """Name of the last top-level module that holds an ``nn.Linear`` (fc, classifier, head)."""
    for name, child in reversed(list(model.named_children())):
        if isinstance(child, nn.Linear) or any(isinstance(m, nn.Linear) for m in child.modules()):
            return name
    raise ValueError(f"backbone: cannot find a linear head in {type(model).__name__}")


def build_model(backbone: str, num_bins: int, weights: str | None = None) -> tuple[nn.Module, str, list[str]]:
    """A torchvision model with a ``num_bins`` head; ``weights`` is a local state dict whose
    tensors of matching shape are loaded (an ImageNet head is skipped). Returns the model,
    its head name and the keys that were not loaded."""
    import torchvision

    try:
        model = torchvision.models.get_model(backbone, weights=None, num_classes=num_bins)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:12])
        raise ValueError(f"backbone: unknown torchvision model {backbone!r} (e.g. {names}, ...)") from None
    skipped: list[str] = []
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights: no such file: {weights}")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"weights: {weights} cannot be read as a state dict ({type(error).__name__}); give a "
                             ".pth file of tensors") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"weights: {weights} holds a {type(state).__name__}, expected a state dict")
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(own) - set(usable))
        model.load_state_dict(usable, strict=False)
    return model, default_head(model), skipped


def score_scale_of(table: LabelTable) -> float:
    low, high = table.scale
    return (high - low) / 9.0


def split_table(table: LabelTable, val_fraction: float, seed: int) -> tuple[LabelTable, LabelTable]:
    """The file's own train / test split where it has one, else a seeded random split."""
    if table.split is not None and "train" in table.split:
        held_out = [s for s in ("test", "validation", "testnew") if s in table.split]
        if held_out:
            rows = np.array([s == "train" for s in table.split])
            evaluation = np.array([s == held_out[0] for s in table.split])
            return table.subset(rows), table.subset(evaluation)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(table))
    cut = max(1, int(round(len(table) * val_fraction)))
    return table.subset(np.sort(order[cut:])), table.subset(np.sort(order[:cut]))


def _device(name: str | None) -> torch.device:
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device: {name} is not available on this machine ({torch.cuda.device_count()} CUDA "
                         "device(s)); use --device cpu")
    return device


def _output_folder(path: str) -> Path:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out: {folder} is a file; give a directory")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_metrics(result: dict[str, float], out: Path, stem: str) -> None:
    atomic_write_json(out / f"{stem}.json", result)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(result.keys())
    writer.writerow(f"{v:.6g}" if isinstance(v, float) else v for v in result.values())
    atomic_write_text(out / f"{stem}.csv", buffer.getvalue())


def format_metrics(result: dict[str, float]) -> str:
    names = [("plcc", "P (PLCC)"), ("srcc", "S (SRCC)"), ("accuracy", "accuracy"), ("mae_low", "L (low MAE)"),
             ("mae_medium", "M (medium MAE)"), ("mae_high", "H (high MAE)")]
    return "\n".join(f"{label:>15}: {result[key]:.4f}" for key, label in names)


def evaluate_model(wrapper: ELTAWrapper, dataset, table: LabelTable, batch_size: int, progress: bool) -> dict[str, float]:
    if len(dataset) < 2:
        raise ValueError(f"labels: {len(dataset)} image(s) to evaluate; PLCC and SRCC need at least 2")
    logits, _ = predict(wrapper, DataLoader(dataset, batch_size=batch_size), progress=progress, desc="evaluate")
    predicted = apds.predicted_scores(logits, table.bin_values).numpy()
    true = table.scores[list(dataset.rows)]
    low, high = table.scale
    result = metrics.evaluate(predicted, true, threshold=low + (high - low) * 4 / 9)
    result["num_images"] = float(len(true))
    return result


# Settings that do not change the result, and those a resumed run may change.
_NOT_RESULTS = ("run", "command", "out", "resume", "quiet", "device", "workers", "stop_after_epoch")
_MAY_CHANGE_ON_RESUME = ("epochs",)


def open_run(args: Any) -> RunManifest:
    """The run directory ``--out``: a new or empty one, or with ``--resume`` one whose
    manifest matches this run's settings and inputs (``--epochs`` may change)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} is a file; give a directory for the run")
    if out.is_dir() and any(out.iterdir()) and not args.resume:
        raise ValueError(f"out: {out} is not empty (an earlier run?); pass --resume to continue it, "
                         "or give a new --out")
    manifest = RunManifest(out)
    config = json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in _NOT_RESULTS}))
    before = dict(manifest.data.get("config") or {})
    for name in manifest.check_config(config, may_change=_MAY_CHANGE_ON_RESUME):
        print(f"resume: {name} changed from {before.get(name)!r} to {config.get(name)!r}")
    inputs = {"labels": _path_fingerprint(args.labels)}
    if args.weights:
        inputs["weights"] = _path_fingerprint(args.weights)
    manifest.check_inputs(inputs)
    return manifest


def _path_fingerprint(path: str) -> str:
    path = Path(path)
    if path.is_dir():
        return fingerprint([[str(p.relative_to(path)), sha256_of_file(p)] for p in sorted(path.rglob("*")) if p.is_file()])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return sha256_of_file(path)


def train(args: Any) -> dict[str, float]:
    """``elta train``: returns the evaluation metrics of the final model."""
    if args.batch_size < 1:
        raise ValueError(f"batch-size: expected an int >= 1, got {args.batch_size}")
    manifest = open_run(args)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    table = load_labels(args.labels, args.format, image_root=args.images, **csv_options(args))
    train_table, eval_table = split_table(table, args.val_fraction, args.seed)
    model, head, skipped = build_model(args.backbone, len(table.bin_values), args.weights)
    model.to(_device(args.device))
    wrapper = ELTAWrapper(
        model, head, tfa=args.tfa, num_pairs=args.num_pairs, flsa_weight=args.flsa,
        bin_values=table.bin_values.tolist(), score_scale=score_scale_of(table), seed=args.seed,
    )
    train_data = ImageLabelDataset(train_table, train=True, image_size=args.image_size, skip_unreadable=args.skip_unreadable)
    eval_data = ImageLabelDataset(eval_table, image_size=args.image_size, skip_unreadable=args.skip_unreadable)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=args.lr)
    config = RunConfig(args.backbone, len(table.bin_values), table.bin_values.tolist(), list(table.scale),
                       args.image_size, head)
    round1 = _train_epochs(args, wrapper, train_data, optimizer, config, manifest)
    if round1 is None:
        return {}
    if args.apds:
        _self_training_round(args, wrapper, table, train_data, eval_data, round1, manifest)
    result = evaluate_model(wrapper, eval_data, eval_table, args.batch_size, not args.quiet)
    result["skipped_images"] = float(len(train_data.skipped) + len(eval_data.skipped))
    _write_metrics(result, out, "metrics")
    if skipped:
        print(f"weights: {len(skipped)} tensors not loaded (new head or other shapes), e.g. {skipped[0]}")
    return result


CHECKPOINT_KEY = "epochs"  # the manifest key of checkpoint.pt: what it holds is resumable training


def _train_epochs(args: Any, wrapper: ELTAWrapper, data: ImageLabelDataset, optimizer, config: RunConfig,
                  manifest: RunManifest) -> dict | None:
    """Train (or resume) the epochs, checkpointing each with the optimizer and every
    random generator's state, so that a resumed run equals the uninterrupted one. Returns
    the last epoch's checkpoint (the state to resume from), None when stopped early. After
    an APDS round the checkpoint holds the round-2 model and, under ``"resume"``, this state."""
    model, path = wrapper.model, manifest.folder / CHECKPOINT
    if len(data) < 2:
        raise ValueError(f"labels: {len(data)} training image(s) after the split; at least 2 are needed to train")
    order = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        generator=order, drop_last=len(data) > args.batch_size)
    generators = [wrapper.generator, order]
    key = manifest.stage_key("checkpoint", CHECKPOINT_KEY)
    first_epoch, state = 0, None
    if args.resume and manifest.reusable("checkpoint", path, key):
        state = load_checkpoint_file(path, device_of(model))
        state = state.get("resume", state)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.restore(state["rng"], generators)
        first_epoch = int(state["epoch"])
        print(f"resuming from {path} after epoch {first_epoch}")
    for epoch in range(first_epoch, args.epochs):
        try:
            losses = fit(wrapper, loader, optimizer, epochs=1, progress=not args.quiet,
                         desc=f"epoch {epoch + 1}/{args.epochs}")
        except FloatingPointError as error:
            kept = f"the last good checkpoint (epoch {epoch}) is kept at {path}" if epoch else "no checkpoint was written"
            raise FloatingPointError(f"{error}; {kept}") from None
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise FloatingPointError(f"epoch {epoch + 1}/{args.epochs}: the weights became NaN or Inf in the last "
                                     f"step; the last good checkpoint (epoch {epoch}) is kept at {path}")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                 "config": config.__dict__, "loss": losses[-1], "rng": rng.snapshot(generators)}
        atomic_save(state, path)
        manifest.record("checkpoint", path, key)
        if args.stop_after_epoch and epoch + 1 >= args.stop_after_epoch:
            print(f"stopped after epoch {epoch + 1} (--stop-after-epoch); rerun with --resume to continue")
            return None
    return state


def load_checkpoint_file(path: str | Path, device: torch.device) -> dict:
    """A checkpoint written by ``elta train``, or an error that names the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        reason = str(error).split("\n")[0][:160]
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds objects other than tensors and numbers, which are not loaded for safety"
        raise ValueError(f"checkpoint: {path} cannot be read ({type(error).__name__}: {reason}); it is damaged or "
                         "not an elta checkpoint: restore it, or delete it and train again") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"checkpoint: {path} was not written by elta train")
    return state


def _self_training_round(args: Any, wrapper: ELTAWrapper, table: LabelTable, train_data, eval_data, round1: dict,
                         manifest: RunManifest) -> None:
    """``--apds``: one self-training round from the trained weights (round 1). The final
    checkpoint holds the round-2 model, and the round-1 training state to resume from."""
    out = manifest.folder
    # Round 2 trains the same parameters in place: keep round 1's weights for the resume state.
    round1 = {**round1, "model": {name: value.clone() for name, value in round1["model"].items()}}
    if not args.unlabelled:
        raise ValueError("unlabelled: --apds needs --unlabelled (a folder of images or a label file)")
    pool = unlabelled_pool(args, table)
    trainer = SelfTraining(
        wrapper, out / "self_training", epochs=args.round2_epochs, round2=args.round2, betas=args.betas,
        thresholds=args.thresholds, min_selected=args.min_selected, pseudo_label=args.pseudo_label,
        optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=args.lr / 4),
        batch_size=args.batch_size, progress=not args.quiet, tag={"lr": args.lr},
    )
    calibration = eval_data  # (beta, t) are then chosen on the evaluation images
    if args.calibration:
        calibration_table = load_labels(args.calibration, args.calibration_format or args.format, image_root=args.images)
        calibration = ImageLabelDataset(calibration_table, image_size=args.image_size, skip_unreadable=args.skip_unreadable)
    summary = trainer.run(train_data, calibration, pool, round1="current")
    print(f"APDS: beta* {summary['grid']['beta']:g}, t* {summary['grid']['threshold']:g}, "
          f"{summary['num_kept']} pseudo-labels kept of {summary['num_selected']} selected")
    atomic_save({"model": wrapper.model.state_dict(), "epoch": round1["epoch"], "config": round1["config"],
                 "round": 2, "resume": round1}, out / CHECKPOINT)
    manifest.record("checkpoint", out / CHECKPOINT, manifest.stage_key("checkpoint", CHECKPOINT_KEY))


def unlabelled_pool(args: Any, table: LabelTable) -> ImageLabelDataset:
    if Path(args.unlabelled).is_dir():
        files = image_files(args.unlabelled)
        if not files:
            raise ValueError(f"unlabelled: no images in {args.unlabelled} (looked for .jpg, .png, ... recursively)")
        pool_table = LabelTable(files, np.zeros(len(files)), None, table.bin_values, table.scale, source=args.unlabelled)
    else:
        pool_table = load_labels(args.unlabelled, args.unlabelled_format or args.format, image_root=args.images)
    return ImageLabelDataset(pool_table, image_size=args.image_size, labels=False, skip_unreadable=args.skip_unreadable)


def load_checkpoint(path: str, device: torch.device) -> tuple[ELTAWrapper, RunConfig]:
    state = load_checkpoint_file(path, device)
    try:
        config = RunConfig(**state["config"])
    except TypeError:
        raise ValueError(f"checkpoint: {path} has an unknown configuration (another elta version?)") from None
    model, head, _ = build_model(config.backbone, config.num_bins)
    model.load_state_dict(state["model"])
    model.to(device)
    scale = (config.scale[1] - config.scale[0]) / 9.0
    return ELTAWrapper(model, config.head, bin_values=config.bin_values, score_scale=scale).eval(), config


def evaluate(args: Any) -> dict[str, float]:
    """``elta evaluate``: metrics of a checkpoint on a label file (its test split if it has one)."""
    wrapper, config = load_checkpoint(args.checkpoint, _device(args.device))
    table = load_labels(args.labels, args.format, image_root=args.images, **csv_options(args))
    if args.split:
        table = table.where_split(args.split)
    data = ImageLabelDataset(table, image_size=config.image_size, skip_unreadable=args.skip_unreadable)
    result = evaluate_model(wrapper, data, table, args.batch_size, not args.quiet)
    result["skipped_images"] = float(len(data.skipped))
    if args.out:
        _write_metrics(result, _output_folder(args.out), "evaluation")
    return result


def pseudo_label(args: Any) -> dict[str, Any]:
    """``elta pseudo-label``: grid search on a labelled calibration file, then pseudo-labels
    for an unlabelled pool, written as ``pseudo_labels.csv`` (image, score, p_1..p_C)."""
    device = _device(args.device)
    wrapper, config = load_checkpoint(args.checkpoint, device)
    args.image_size = args.image_size or config.image_size
    calibration = load_labels(args.calibration, args.format, image_root=args.images, **csv_options(args))
    calibration_data = ImageLabelDataset(calibration, image_size=config.image_size, skip_unreadable=args.skip_unreadable)
    logits, _ = predict(wrapper, DataLoader(calibration_data, batch_size=args.batch_size), progress=not args.quiet, desc="calibration")
    args.unlabelled_format = args.unlabelled_format or args.format
    pool = unlabelled_pool(args, calibration)
    pool_logits, _ = predict(wrapper, DataLoader(pool, batch_size=args.batch_size), progress=not args.quiet, desc="unlabelled")
    true = torch.as_tensor(calibration.scores[list(calibration_data.rows)], dtype=torch.float32)
    chosen = pseudo_label_round(logits, true, pool_logits, betas=args.betas, thresholds=args.thresholds,
                                bin_values=config.bin_values, min_selected=args.min_selected,
                                pseudo_label=args.pseudo_label, score_scale=wrapper.score_scale)
    result = chosen.grid
    out = _output_folder(args.out)
    atomic_write_json(out / "grid.json", result.as_dict())
    atomic_write_text(out / "grid.md", result.to_markdown() + "\n")
    values = torch.as_tensor(config.bin_values)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "score"] + [f"p_{v:g}" for v in config.bin_values])
    for index, label in zip(chosen.indices.tolist(), chosen.labels):
        writer.writerow([pool.table.images[pool.rows[index]], f"{float(label @ values):.4f}"] + [f"{p:.6f}" for p in label.tolist()])
    path = atomic_write_text(out / "pseudo_labels.csv", buffer.getvalue())
    return {"grid": result, "num_selected": chosen.num_kept, "pool": len(pool), "path": str(path)}

