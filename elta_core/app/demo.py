"""``elta demo``: baseline against ELTA and two established methods on the built-in
synthetic dataset, on the CPU: a small ``elta compare``.

A small CNN is trained the ways of the paper's Table 4: baseline, +TFA, +FLSA,
+TFA+FLSA and +TFA+FLSA+APDS (one self-training round from the +TFA+FLSA model, through
:class:`~elta_core.adapters.torch.SelfTraining`), plus the control every self-training
claim needs (the same round 2, same epochs and learning rate, on the labelled set alone,
without pseudo-labels) and two peers, LDS and RankSim
(:mod:`elta_core.adapters.torch.peers`), each alone with their papers' defaults; every
row over the same seeds. The tables are ``elta compare``'s
(:func:`elta_core.app.compare.summarise`): mean +- std, and each row's paired difference
to the baseline with its 95 % Student-t interval over the seeds; a picture like the
paper's Figure 1 shows the score histogram and predicted against true scores for the
baseline and for ELTA.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from elta_core import apds, metrics
from elta_core.adapters.torch import ELTAWrapper, SelfTraining, fit
from elta_core.adapters.torch.loop import make_optimizer
from elta_core.adapters.torch.peers import make_peer
from elta_core.app.compare import RemainingTime, summarise, write_differences
from elta_core.app.methods import FLSA_OFF, METHODS, uses_self_training
from elta_core.app.models import create_backbone
from elta_core.app.options import peer_setting_values, peer_settings
from elta_core.data.stats import FIGURE1_BINS, figure1_counts
from elta_core.data.synthetic import generate
from elta_core.io import atomic_write_json, atomic_write_text
from elta_core.training_options import lr_factor

# The demo's rows: methods of elta compare's table (elta_core.app.methods), by their Table 4 names.
ROW_NAMES = {"baseline": "baseline", "tfa": "+TFA", "flsa": "+FLSA", "elta": "+TFA+FLSA",
             "elta+apds": "+TFA+FLSA+APDS", "elta+round2-control": "+TFA+FLSA+round 2, no pseudo-labels",
             "lds": "LDS", "ranksim": "RankSim"}
ROWS = list(ROW_NAMES.values())
CONTROL = ROW_NAMES["elta+round2-control"]
PEER_ROWS = [method for method in ROW_NAMES if METHODS[method].get("peers")]
DEMO_MODEL = "elta/small-cnn"  # registered with the backbones (elta train --backbone elta/small-cnn)


@dataclass(frozen=True)
class DemoConfig:
    train: int = 4000
    calibration: int = 1000
    unlabelled: int = 4000
    test: int = 2000
    image_size: int = 32
    epochs: int = 8
    round2_epochs: int = 8  # round 2 as long as round 1, as elta train's default (10 = --epochs)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    lr: float = 4e-3  # measured on the calibration split (benchmarks/demo_defaults.py, docs/design.md)
    lr_schedule: str = "cosine"  # elta train's default from scratch; per round, over its epochs
    # lr / 4 after 8 epochs of round 1, better here than lr / 12 and lr / 40 (elta train's default
    # after a converged round 1); docs/design.md, "Round 2's rate"
    round2_lr: float = 1e-3
    num_pairs: float = 0.25
    flsa_weight: float = 1.0
    # RankSim's authors weigh their per-row sum 100 beside an L1 loss in years of age; beside
    # this EMD (about 0.1) that swamps the task loss, and so does 1 (P 0.22 in the full
    # demo). 1 / 64 (the batch) makes its term the per-row mean at weight 1. Written as
    # elta train's --peer-settings.
    peer_settings: tuple[str, ...] = peer_settings(f"ranksim.weight={1 / 64}")
    betas: tuple[float, ...] = apds.DEFAULT_BETAS
    thresholds: str | tuple[float, ...] = apds.DEFAULT_THRESHOLDS
    data_seed: int = 2024


FULL = DemoConfig()
QUICK = replace(FULL, train=1200, calibration=400, unlabelled=1200, test=800, epochs=4, round2_epochs=4)


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.25)
    return images, torch.from_numpy(data.distributions).float()


class _Flipped(TensorDataset):
    """Random horizontal flips for training (composition is symmetric, so labels hold)."""

    def __getitem__(self, index):
        x, *rest = super().__getitem__(index)
        if torch.rand(()) < 0.5:
            x = torch.flip(x, dims=[2])
        return (x, *rest)


@torch.no_grad()
def _predicted_scores(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    model.eval()
    logits = torch.cat([model(chunk) for chunk in images.split(512)])
    return apds.predicted_scores(logits).numpy()


def _train_row(method: str, seed: int, data: dict, config: DemoConfig, workdir: Path, progress: bool):
    """Train one method's row; for the APDS rows the +TFA+FLSA round 1 is resumed from disk."""
    torch.manual_seed(seed)
    settings, row = METHODS[method], ROW_NAMES[method]
    values = peer_setting_values(config.peer_settings)
    peers = [make_peer(name, data["train"][1], values.get(name)) for name in settings.get("peers", ())]
    wrapper = ELTAWrapper(
        create_backbone(DEMO_MODEL, 10), "head", tfa=settings["tfa"], num_pairs=config.num_pairs,
        flsa_weight=0.0 if settings["flsa"] == FLSA_OFF else config.flsa_weight, seed=seed, peers=peers,
    )
    generator = torch.Generator().manual_seed(seed)

    def train(wrapper, labelled_loader, pseudo_loader, round_index):
        epochs = config.epochs if round_index == 1 else config.round2_epochs
        optimizer = make_optimizer(torch.optim.AdamW, wrapper.parameters(),
                                   lr=config.lr if round_index == 1 else config.round2_lr)
        fit(wrapper, labelled_loader, optimizer, epochs=epochs, pseudo_loader=pseudo_loader,
            progress=progress, desc=f"{row} seed {seed} round {round_index}",
            lr_schedule=lr_factor(config.lr_schedule, epochs))

    labelled = _Flipped(*data["train"])
    round1_shared = settings["tfa"] and settings["flsa"] != FLSA_OFF and not peers  # the rows that share ELTA's round 1
    if round1_shared:
        trainer = SelfTraining(
            wrapper, workdir / f"seed{seed}", train=train, betas=config.betas, thresholds=config.thresholds,
            batch_size=config.batch_size, loader_kwargs={"generator": generator}, progress=progress,
        )
        summary = trainer.run(
            labelled, TensorDataset(*data["calibration"]), TensorDataset(data["unlabelled"][0]),
            stop_after=None if uses_self_training(method) and settings.get("max_pseudo_labels") != 0 else "round1",
        )
        if settings.get("max_pseudo_labels") == 0:  # APDS's round 2, epochs and learning rate included, no pseudo-labels
            loader = torch.utils.data.DataLoader(labelled, batch_size=config.batch_size, shuffle=True,
                                                 generator=generator)
            train(wrapper, loader, None, 2)
            summary = {}
    else:
        loader = torch.utils.data.DataLoader(labelled, batch_size=config.batch_size, shuffle=True, generator=generator)
        train(wrapper, loader, None, 1)
        summary = {}
    return _predicted_scores(wrapper.model, data["test"][0]), summary


def _figure(path: Path, train_scores: np.ndarray, test_scores: np.ndarray, predictions: dict[str, list[np.ndarray]],
            seeds: tuple[int, ...]) -> None:
    """The training histogram, then predicted against true scores for the baseline, for
    ELTA with APDS and for its control (the same round 2 without pseudo-labels), every
    seed overlaid, the low and high 20 % segments shaded with their MAE: what the table
    concludes is in the picture."""
    from elta_core.app.plotting import histogram, predicted_against_true, pyplot, save_png

    fig, axes = pyplot().subplots(1, 4, figsize=(21, 5))
    histogram(axes[0], FIGURE1_BINS, figure1_counts(train_scores),
              f"Training set: {len(train_scores):,} images (paper Figure 1 bins)")
    labels = [f"seed {seed}" for seed in seeds]
    for axis, method, colour in ((axes[1], "baseline", "tab:blue"), (axes[2], "elta+apds", "tab:red"),
                                 (axes[3], "elta+round2-control", "tab:green")):
        predicted_against_true(axis, test_scores, predictions[ROW_NAMES[method]], ROW_NAMES[method], colour, labels)
    fig.suptitle(f"elta demo: test set ({len(test_scores):,} images), seeds {', '.join(map(str, seeds))}; "
                 "shaded: the low and high 20 % of true scores")
    fig.tight_layout()
    save_png(fig, path)


def run_folder(out: Path, config: DemoConfig) -> Path:
    """Where the self-training stages of ``config`` live: one folder per configuration, so
    that another configuration (``--quick`` against the full run, say) never reuses them."""
    fingerprint = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    return Path(out) / "runs" / fingerprint


def run_demo(config: DemoConfig = FULL, out_dir: str | Path = "elta_demo", progress: bool = True,
             threads: int = 1) -> dict:
    """Run the demo; write ``table.md``, ``results.json`` and ``figure.png`` to ``out_dir``.
    ``progress`` prints one line per (method, seed) with the time left; ``threads`` is
    torch's thread count (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo(config, Path(out_dir), progress)
    finally:
        torch.set_num_threads(before)


def demo_splits(config: DemoConfig) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, np.ndarray]]:
    """The demo's seeded dataset cut into its train, calibration, unlabelled and test
    splits: each split's (images, distributions) tensors, and each split's true scores."""
    sizes = [config.train, config.calibration, config.unlabelled, config.test]
    dataset = generate(sum(sizes), config.image_size, seed=config.data_seed)
    bounds = np.cumsum([0] + sizes)
    names = ["train", "calibration", "unlabelled", "test"]
    parts = {name: _tensors(dataset.subset(slice(bounds[k], bounds[k + 1]))) for k, name in enumerate(names)}
    scores = {name: dataset.scores[bounds[k]:bounds[k + 1]] for k, name in enumerate(names)}
    return parts, scores


def _run_demo(config: DemoConfig, out: Path, progress: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    parts, scores = demo_splits(config)
    test_scores, train_scores = scores["test"], scores["train"]

    results: dict[str, list[dict]] = {row: [] for row in ROWS}
    grids, predictions = [], {row: [] for row in ROWS}
    workdir = run_folder(out, config)
    clock = RemainingTime(len(config.seeds) * len(ROW_NAMES))
    for seed in config.seeds:
        for method, row in ROW_NAMES.items():
            if progress:
                print(f"demo: {row}, seed {seed}{clock.line()}", flush=True)
            predicted, summary = _train_row(method, seed, parts, config, workdir, progress=False)
            clock.done()
            results[row].append(metrics.evaluate(predicted, test_scores))
            if "grid" in summary:
                grids.append({"seed": seed, "beta": summary["grid"]["beta"], "threshold": summary["grid"]["threshold"],
                              "thresholds_from": summary["grid"]["thresholds_from"],
                              "selected": summary["num_selected"], "kept": summary["num_kept"]})
            predictions[row].append(predicted)

    summary = summarise(results, "baseline")
    elapsed = time.perf_counter() - start
    report = {
        "config": asdict(config),
        "seconds": elapsed,
        "table": summary["markdown"],
        "differences": summary["differences"],
        "results": results,
        "apds": grids,
        "train_histogram": dict(zip(FIGURE1_BINS, figure1_counts(train_scores))),
    }
    atomic_write_json(out / "results.json", report)
    atomic_write_text(out / "table.md", summary["markdown"] + "\n")
    _figure(out / "figure.png", train_scores, test_scores, predictions, config.seeds)
    write_differences(out / "differences.png", summary, f"elta demo, {len(config.seeds)} seeds")
    report["paths"] = {name: str(out / name) for name in ("table.md", "results.json", "figure.png",
                                                          "differences.png")}
    return report


def _grid_name(thresholds_from: str) -> str:
    return "paper grid" if thresholds_from == "the paper's grid" else "quantile grid"


def describe(report: dict) -> str:
    config = report["config"]
    apds = ", ".join(f"seed {g['seed']}: beta {g['beta']:g}, t {g['threshold']:g} ({_grid_name(g['thresholds_from'])}), "
                     f"{g['kept']} kept of {g['selected']} selected" for g in report["apds"])
    return "\n".join([
        f"Synthetic long-tailed aesthetics: {config['train']} labelled, {config['calibration']} calibration, "
        f"{config['unlabelled']} unlabelled and {config['test']} test images of {config['image_size']}x{config['image_size']}.",
        f"Small CNN, {config['epochs']} epochs (+{config['round2_epochs']} for the APDS round), "
        f"TFA {config['num_pairs']:g} of each batch, FLSA weight {config['flsa_weight']:g}, seeds {list(config['seeds'])}; "
        f"{' and '.join(ROW_NAMES[name] for name in PEER_ROWS)} alone, with their authors' defaults but "
        f"{', '.join(config['peer_settings'])}.",
        "P = PLCC, S = SRCC, L/M/H = MAE on the low 20 % / middle 60 % / high 20 % of true scores.",
        "",
        report["table"],
        "",
        f"APDS grid search: {apds}",
        "APDS thresholds: 'auto': the paper's grid, or where it selects fewer than min_selected, quantiles of the "
        "calibration set's sharpened confidence.",
        f"Took {report['seconds']:.0f} s. Table, results and picture: " + ", ".join(report["paths"].values()),
    ])
