"""The ``elta`` command: ``demo``, ``synth``, ``stats``, ``prepare``, ``train``, ``evaluate``, ``pseudo-label``,
``compare``.

Frameworks are imported by the subcommand that needs them, so ``elta stats`` runs with
NumPy alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from elta_core.data.labels import FORMATS
from elta_core.pseudo_labels import DEFAULT_ROUND2, ROUND2_MODES
from elta_core.step import DEFAULT_FLSA_WEIGHT, DEFAULT_NUM_PAIRS

OPTIMIZERS = ("adamw", "adam")
SELECT_BEST = ("none", "srcc", "plcc")
# The plug-ins of elta_core.adapters.torch.peers (named here so that --help does not import torch).
PEER_NAMES = ("lds", "fds", "ranksim", "cmixup", "bmse")


def csv_options(args: argparse.Namespace) -> dict:
    """The --format csv options, for load_labels."""
    if args.format != "csv":
        return {}
    if len(args.scale) != 2 or not args.scale[0] < args.scale[1]:
        raise ValueError(f"scale: expected LOW,HIGH with LOW < HIGH, got {args.scale}")
    return {"image_column": args.image_column, "score_column": args.score_column, "scale": tuple(args.scale),
            "split_column": args.split_column}


def _synth(args: argparse.Namespace) -> int:
    from elta_core.data.synthetic import SPLIT_FILES, export, generate

    path = export(generate(args.count, args.image_size, seed=args.seed), args.out, splits=args.split, seed=args.seed)
    print(f"{args.count} images in {Path(args.out) / 'images'}, labels in {path} (--format ava)")
    if args.split:
        print(f"splits in {', '.join(str(Path(args.out) / name) for name in SPLIT_FILES)}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from elta_core.data import load_labels, long_tail_summary

    table = load_labels(args.labels, args.format, **csv_options(args))
    summary = long_tail_summary(table)
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False))
    else:
        low, high = table.scale
        print(f"{summary['source']}: {summary['total']} images")
        if summary["rescaled"]:
            print(f"scores rescaled from {low:g}..{high:g} to 1..10 (s' = 1 + 9 (s - {low:g}) / {high - low:g})")
        width = max(len(b) for b in summary["bins"])
        peak = max(summary["counts"]) or 1
        for name, count, share in zip(summary["bins"], summary["counts"], summary["shares"]):
            bar = "#" * int(round(40 * count / peak))
            print(f"  {name:>{width}} {count:>8} {100 * share:6.2f} %  {bar}")
        middle = summary["middle_60"]
        print(f"middle 60 % of images: scores {middle['low']:.2f} .. {middle['high']:.2f}, "
              f"{100 * middle['range_share']:.1f} % of the 1..10 range")
        print(f"mean {summary['mean']:.3f}, std {summary['std']:.3f}, share in [4,7): {100 * summary['share_4_to_7']:.1f} %")
    if args.plot:
        _plot_histogram(summary, Path(args.plot), args.format)
        if not args.json:
            print(f"histogram saved to {args.plot}")
    return 0


def _plot_histogram(summary: dict, path: Path, format: str) -> None:
    from elta_core.app.plotting import histogram, pyplot, save_png

    fig, axis = pyplot().subplots(figsize=(8, 4.5))
    name = Path(summary["source"]).name or summary["source"]
    rescaled = " (rescaled to 1..10)" if summary["rescaled"] else ""
    histogram(axis, summary["bins"], summary["counts"],
              f"{format.upper()} labels, {name}: {summary['total']:,} images{rescaled}")
    fig.tight_layout()
    save_png(fig, path)


def _demo(args: argparse.Namespace) -> int:
    from elta_core.optional import require

    for module, extra in (("torch", "torch"), ("tqdm", "torch"), ("matplotlib", "plot")):
        require(module, extra)
    from elta_core.app.demo import FULL, QUICK, describe, run_demo

    config = QUICK if args.quick else FULL
    report = run_demo(config, args.out, progress=not args.quiet)
    print(describe(report))
    return 0


def _is_main() -> bool:
    from elta_core.adapters.torch.distributed import is_main

    return is_main()


def _leave_process_group() -> None:
    """Under torchrun: leave the process group the command joined (if it did)."""
    if "torch.distributed" in sys.modules:
        from elta_core.adapters.torch.distributed import shutdown

        shutdown()


def _needs_vision() -> None:
    from elta_core.optional import require

    for module in ("torch", "torchvision", "PIL", "tqdm"):
        require(module, "vision")


def _train(args: argparse.Namespace) -> int:
    _needs_vision()
    from elta_core.app.training import format_metrics, train

    result = train(args)
    if result and _is_main():
        print(format_metrics(result))
        out = Path(args.out)
        best = f", best epoch {result['best_epoch']}" if "best_epoch" in result else ""
        print(f"test metrics of {out / result['checkpoint']}{best} in {out / 'metrics.json'}; per-image predictions "
              f"in predictions.csv; per-epoch metrics in metrics.csv")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _needs_vision()
    from elta_core.app.training import evaluate, format_metrics

    result = evaluate(args)
    if _is_main():
        print(format_metrics(result))
    return 0


def _compare(args: argparse.Namespace) -> int:
    _needs_vision()
    from elta_core.app.compare import compare, parse_methods

    train_arguments = [a for a in args.train_arguments if a != "--"]
    if not train_arguments:  # the built-in dataset, written once under --out
        from elta_core.data.synthetic import export, generate

        count, size, epochs = (160, 32, 2) if args.quick else (600, 32, 4)
        data = Path(args.out) / "data"
        if not (data / "labels.csv").exists():
            export(generate(count, size, seed=2024), data)
        train_arguments = ["--labels", str(data / "labels.csv"), "--format", "ava", "--images", str(data / "images"),
                           "--backbone", "resnet18", "--image-size", str(size), "--epochs", str(epochs),
                           "--batch-size", "32", "--val-fraction", "0.25"]
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 3)))
    report = compare(train_arguments, parse_methods(args.methods), seeds, args.out, progress=not args.quiet)
    print(report["markdown"])
    print("written: " + ", ".join(report["paths"].values()))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    _needs_vision()
    from elta_core.app.prepare import prepare
    from elta_core.app.training import default_workers
    from elta_core.data import load_labels

    table = load_labels(args.labels, args.format, image_root=args.images, **csv_options(args))
    workers = default_workers() if args.workers is None else args.workers
    result = prepare(table, args.images, args.out, args.size, quality=args.quality, workers=workers,
                     progress=not args.quiet)
    print(f"{result['written']} images resized to {args.size} x {args.size} ({result['already_there']} already "
          f"there) in {result['folder']}: train with --images {result['folder']}")
    if result["unreadable"]:
        print(f"{len(result['unreadable'])} unreadable image(s) not prepared, e.g. {result['unreadable'][0]}")
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    _needs_vision()
    from elta_core.app.training import pseudo_label

    result = pseudo_label(args)
    if not _is_main():
        return 0
    print(result["grid"].to_markdown())
    print(f"beta* {result['grid'].beta:g}, t* {result['grid'].threshold:g}: "
          f"{result['num_selected']} of {result['pool']} pool images pseudo-labelled -> {result['path']}")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _max_pseudo_labels(text: str):
    if text in ("labelled", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected labelled, none or an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected labelled, none or an int >= 0, got {value}")
    return value


def _thresholds(text: str):
    return text if text in ("auto", "paper", "quantiles") else _floats(text)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (where there is one); descriptions and examples kept
    as written."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)


FORMAT_HELP = ("label file format: ava (CSV with score2..score11 vote counts), ava-txt (AVA.txt), tad66k (image,score "
               "CSV or a folder of per-theme CSVs), aadb (imgList*Regression_score.txt, 0..1), para (PARA GIAA CSVs, "
               "1..5), csv (an image column and a score column or count columns; see --image-column)")


def _subcommand(commands, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=f"{description}\n\nexample:\n  {example}",
                               formatter_class=_HelpFormatter)


def _labels_options(parser: argparse.ArgumentParser, name: str = "--labels") -> None:
    parser.add_argument(name, required=True, help="the label file (or folder, for tad66k, aadb and para)")
    parser.add_argument("--format", required=True, choices=FORMATS, help=FORMAT_HELP)
    _csv_options(parser)


def _csv_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-column", default="image", help="for --format csv: the column of image names")
    parser.add_argument("--score-column", default=None,
                        help="for --format csv: the score column (default: 'score' if present, else the other "
                             "columns are read as vote counts)")
    parser.add_argument("--scale", type=_floats, default=(1.0, 10.0), metavar="LOW,HIGH",
                        help="for --format csv: the rating scale of the scores")
    parser.add_argument("--split-column", default=None,
                        help="for --format csv: a column naming each image's split (train, validation, test)")


def _apds_options(parser: argparse.ArgumentParser) -> None:
    from elta_core import apds

    parser.add_argument("--betas", type=_floats, default=apds.DEFAULT_BETAS, help="APDS betas, comma-separated")
    parser.add_argument("--thresholds", type=_thresholds, default=apds.DEFAULT_THRESHOLDS,
                        help="APDS thresholds: auto (the paper's 0.70..0.90, or when they select nothing the "
                             "0.5..0.9 quantiles of the calibration set's confidence), paper, quantiles, or "
                             "comma-separated numbers in (0, 1]")
    parser.add_argument("--min-selected", type=float, default=apds.DEFAULT_MIN_SELECTED,
                        help="the fewest pseudo-labels a grid cell must select: a count, or a fraction of the "
                             "calibration set")
    parser.add_argument("--pseudo-label", choices=("sharpened", "prediction"), default=apds.DEFAULT_PSEUDO_LABEL,
                        help="train on the sharpened distribution (Eq. 10) or the unsharpened prediction "
                             "(the authors' code)")


def _common(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    parser.add_argument("--images", help="folder the label file's image names are relative to")
    if batch_size:
        parser.add_argument("--batch-size", type=_at_least(1), default=32, help="images per batch")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    parser.add_argument("--workers", type=_at_least(0), default=None,
                        help="DataLoader worker processes per process (default: this machine's cores, divided among "
                             "the processes torchrun starts on it; 0: load in the main process)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip missing or corrupt images and report how many")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_demo(commands) -> None:
    demo = _subcommand(commands, "demo", "baseline vs ELTA and two established methods on the built-in synthetic "
                       "dataset (CPU)",
                       "A small elta compare: trains a small CNN the ways of the paper's Table 4 (baseline, +TFA, +FLSA, "
                       "+TFA+FLSA, +TFA+FLSA+APDS),\nthe control for APDS (the same round 2 without pseudo-labels) and "
                       "LDS and RankSim alone, over 3 seeds on a generated\nlong-tailed dataset; prints P, S, accuracy, "
                       "MSE, L, M, H and each row's paired difference to the baseline with its 95 %\ninterval; writes "
                       "table.md, results.json and figure.png.", "elta demo --quick")
    demo.add_argument("--quick", action="store_true",
                      help="a smaller run (about 50 s on 2 idle cores; the full run about 5 minutes)")
    demo.add_argument("--out", default="elta_demo", help="where table.md, results.json and figure.png go")
    demo.add_argument("--quiet", action="store_true", help="no progress bars (the results are the same)")
    demo.set_defaults(run=_demo)


def _add_synth(commands) -> None:
    synth = _subcommand(commands, "synth", "write the built-in synthetic dataset as images and an AVA-format CSV",
                        "Generates long-tailed synthetic aesthetics images with vote counts, to try the other "
                        "commands without a dataset of your own.", "elta synth --out data/ --count 200")
    synth.add_argument("--out", required=True, help="folder for images/ and labels.csv")
    synth.add_argument("--count", type=_at_least(2), default=200, help="how many images")
    synth.add_argument("--image-size", type=_at_least(8), default=64, help="side of the square images, pixels")
    synth.add_argument("--seed", type=int, default=0, help="the dataset's seed")
    synth.add_argument("--split", type=_floats, metavar="TRAIN,VAL,TEST",
                       help="also write train.csv, val.csv and test.csv with these fractions of the images")
    synth.set_defaults(run=_synth)


def _add_stats(commands) -> None:
    stats = _subcommand(commands, "stats", "long-tail summary of a label file",
                        "Counts per score bin (the paper's Figure 1 bins), the middle-60 % interval and the share "
                        "of images in [4, 7);\nscores on other scales are mapped to 1..10.",
                        "elta stats AVA.csv --format ava --plot hist.png")
    stats.add_argument("labels", help="the label file (or folder, for tad66k, aadb and para)")
    stats.add_argument("--format", required=True, choices=FORMATS, help=FORMAT_HELP)
    _csv_options(stats)
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.add_argument("--plot", metavar="FILE.png", help="save a histogram with the tails readable")
    stats.set_defaults(run=_stats)


def _add_train(commands) -> None:
    from elta_core.app.models import HEADS
    from elta_core.app.recipe import RECIPES, recipe_help

    train = _subcommand(commands, "train", "train a torchvision or timm backbone with TFA / FLSA / APDS",
                        "Trains a torchvision or timm model with a distribution (or score) head on a label file and\n"
                        "its images, with TFA and FLSA on by default (--no-tfa --flsa 0 for the baseline),\n"
                        "checkpointing every epoch into --out (resumable with --resume), validating every epoch when\n"
                        "there is a validation set, then evaluating on the test set (metrics.json, metrics.csv,\n"
                        "predictions.csv). --recipe paper sets the authors' training recipe; any flag overrides it.",
                        "elta train --labels data/labels.csv --format ava --images data/images --out runs/r18")
    _labels_options(train)
    _common(train, batch_size=False)
    train.add_argument("--recipe", choices=RECIPES, default="default",
                       help="default: this library's settings; paper: Adam, lr 1e-5, batch 48, 20 epochs, resize 300 "
                            "+ random crop 256 + flip, test resize 256, the authors' heads, best validation SRCC")
    train.add_argument("--backbone", default="resnet18", help="a torchvision model name, or timm/<name> for any timm "
                       "model (e.g. timm/swinv2_base_window8_256; needs elta-core[timm])")
    train.add_argument("--weights", help="local weights to start from: a .pth/.pt state dict or a .safetensors file "
                       "(no downloads; the head may differ)")
    train.add_argument("--head", choices=HEADS, help=recipe_help(
        "head", "linear: Linear(F, C); emd-mlp: Linear(F, 64), ReLU, Linear(64, C); sigmoid: Dropout(0.75), "
        "Linear(F, 1), sigmoid scaled to the rating scale (a score, MSE loss; no APDS)"))
    train.add_argument("--tfa", action=argparse.BooleanOptionalAction, default=True,
                       help="Tail Feature Augmentation (--no-tfa: off)")
    train.add_argument("--num-pairs", type=float, default=DEFAULT_NUM_PAIRS,
                       help="TFA pairs: a count (>= 1) or a fraction of the batch")
    train.add_argument("--flsa", type=float, default=DEFAULT_FLSA_WEIGHT, metavar="WEIGHT",
                       help="FLSA weight gamma (0: off)")
    train.add_argument("--flsa-scope", choices=("global", "local"), default="global",
                       help="under torchrun: FLSA on the global batch (gathered from every process, the same loss "
                            "as one process on that batch) or on each process's own batch")
    train.add_argument("--peers", type=_peer_list, default=[], metavar="NAMES",
                       help="established imbalanced-regression methods to train with, comma-separated: "
                            f"{', '.join(PEER_NAMES)} (their papers' defaults; beside TFA and FLSA unless "
                            "--no-tfa --flsa 0)")
    train.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help=recipe_help("optimizer", "the optimizer"))
    train.add_argument("--lr", type=float, help=recipe_help("lr", "learning rate (constant)"))
    train.add_argument("--batch-size", type=_at_least(1), help=recipe_help("batch_size", "images per batch (per process under torchrun)"))
    train.add_argument("--epochs", type=_at_least(1), help=recipe_help("epochs", "training epochs (may change on "
                                                                               "--resume)"))
    train.add_argument("--image-size", type=_at_least(8), help=recipe_help("image_size", "input size in pixels (the "
                                                                                       "training crop)"))
    train.add_argument("--resize", type=_at_least(8), help=recipe_help("resize", "images are resized to this square "
                                                                              "before the random crop"))
    train.add_argument("--eval-transform", choices=("crop", "resize"), help=recipe_help(
        "eval_transform", "evaluation images: crop (resize as in training, centre crop) or resize (straight to "
        "--image-size)"))
    train.add_argument("--val-labels", help="a labelled validation file (same --format), evaluated every epoch "
                       "(default: the file's own validation split, if any)")
    train.add_argument("--test-labels", help="a labelled test file (same --format) for the final evaluation "
                       "(default: the file's test split, else a random --val-fraction hold-out)")
    train.add_argument("--select-best", choices=SELECT_BEST, help=recipe_help(
        "select_best", "keep the epoch with the best validation SRCC or PLCC (best.pt) and test that one; without a "
        "validation set --val-fraction of the training images is held out for it"))
    train.add_argument("--val-fraction", type=float, default=0.1,
                       help="held out (seeded) for testing when the file has no split, and for validation when "
                            "--select-best needs a validation set and there is none")
    train.add_argument("--apds", action="store_true", help="one APDS self-training round after training")
    train.add_argument("--unlabelled", help="for --apds: a folder of images or a label file (labels ignored)")
    train.add_argument("--unlabelled-format", choices=FORMATS, help="format of --unlabelled (default: --format)")
    train.add_argument("--calibration", help="for --apds: a labelled file for the grid search "
                       "(default: the validation set, else the test split)")
    train.add_argument("--calibration-format", choices=FORMATS, help="format of --calibration (default: --format)")
    train.add_argument("--round2", choices=ROUND2_MODES, default=DEFAULT_ROUND2,
                       help="Eq. 10: concat (pseudo-labelled images join the training set, with TFA and FLSA) or "
                            "separate (their task loss on separate batches)")
    train.add_argument("--round2-epochs", type=_at_least(1), help=recipe_help("round2_epochs", "epochs of the APDS "
                                                                                              "round"))
    train.add_argument("--max-pseudo-labels", type=_max_pseudo_labels, default="labelled",
                       help="for --apds: keep at most this many pseudo-labels, most confident first: labelled (as "
                            "many as labelled images), none (no cap) or a count; 0 is the control run: round 2 "
                            "without pseudo-labels")
    train.add_argument("--round2-resume-optimizer", action=argparse.BooleanOptionalAction, help=recipe_help(
        "round2_resume_optimizer", "round 2 continues round 1's optimizer and its state at --lr (off: a fresh "
        "optimizer at --lr / 4)"))
    _apds_options(train)
    train.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="training forward under autocast (fp16 with a gradient scaler); evaluation stays fp32")
    train.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster convolutions "
                       "on recent GPUs)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (the fused FLSA kernels then "
                       "give way to the reference)")
    train.add_argument("--seed", type=int, default=0, help="seeds the split, the model, the data order and TFA")
    train.add_argument("--out", default="elta_runs/train",
                       help="the run directory (must be new or empty unless --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out (its settings must match)")
    train.add_argument("--stop-after-epoch", type=int, default=0, help=argparse.SUPPRESS)
    train.set_defaults(run=_train)


def _add_evaluate(commands) -> None:
    evaluate = _subcommand(commands, "evaluate", "P, S, accuracy, L, M, H of a checkpoint",
                           "Evaluates a checkpoint written by elta train on a label file (or one split of it).",
                           "elta evaluate --checkpoint runs/r18/checkpoint.pt --labels data/labels.csv --format ava "
                           "--images data/images")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by elta train")
    _labels_options(evaluate)
    evaluate.add_argument("--split", help="evaluate only this split of the file (e.g. test)")
    evaluate.add_argument("--out", help="write evaluation.json and evaluation.csv here")
    _common(evaluate)
    evaluate.set_defaults(run=_evaluate)


def _add_pseudo(commands) -> None:
    pseudo = _subcommand(commands, "pseudo-label", "APDS grid search and pseudo-labels for an unlabelled pool",
                         "Picks (beta, t) on a labelled calibration file, then writes pseudo_labels.csv\n(image, "
                         "score, p_1..p_C) for the confident images of an unlabelled pool.",
                         "elta pseudo-label --checkpoint runs/r18/checkpoint.pt --calibration data/labels.csv "
                         "--format ava --images data/images --unlabelled data/images")
    pseudo.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by elta train")
    _labels_options(pseudo, "--calibration")
    pseudo.add_argument("--unlabelled", required=True, help="a folder of images or a label file")
    pseudo.add_argument("--unlabelled-format", choices=FORMATS, help="format of --unlabelled (default: --format)")
    _apds_options(pseudo)
    pseudo.add_argument("--out", default="elta_runs/pseudo_labels", help="where pseudo_labels.csv and grid.md go")
    _common(pseudo)
    pseudo.set_defaults(run=_pseudo_label)


def _add_compare(commands) -> None:
    from elta_core.app.compare import DEFAULT_METHODS, METHODS

    compare = _subcommand(commands, "compare", "the same model trained with each method and seed, compared honestly",
                          "Runs elta train once per method and seed (same data, splits and seeds; each run resumable\n"
                          "in OUT/runs/METHOD/seedN), then writes compare.md, compare.json and compare.png: P, S,\n"
                          "accuracy, MSE, L, M, H as mean +- std, and each method's paired difference to the first\n"
                          "method with its 95 % Student-t interval. The elta train arguments follow `--`; without\n"
                          "them, the built-in synthetic dataset is used. Methods: " + ", ".join(METHODS) + ".",
                          "elta compare --methods baseline,elta --seeds 5 --out cmp -- --labels data/labels.csv "
                          "--format ava --images data/images --epochs 10")
    compare.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated; the first is the "
                         "reference of the differences")
    compare.add_argument("--seeds", type=_at_least(2), default=None, help="seeds 0..N-1 (default 3; --quick 2)")
    compare.add_argument("--out", default="elta_compare", help="where runs/, compare.md, .json and .png go")
    compare.add_argument("--quick", action="store_true", help="on the built-in dataset: 160 images, 2 epochs, 2 seeds")
    compare.add_argument("--quiet", action="store_true", help="no progress (the results are the same)")
    compare.add_argument("train_arguments", nargs=argparse.REMAINDER,
                         help="-- then the elta train arguments shared by every run (data, backbone, recipe, ...)")
    compare.set_defaults(run=_compare)


def _add_prepare(commands) -> None:
    prepare = _subcommand(commands, "prepare", "resize a label file's images once, for faster training",
                          "Writes every image of the label file resized to --size x --size (the first step of the\n"
                          "training transform; the authors resize to 300 x 300) under OUT/images with the same\n"
                          "names; train on them with --images OUT/images. Resumable; JPEG re-encoded at --quality.",
                          "elta prepare --labels AVA.csv --format ava --images AVA/images --size 300 --out AVA300")
    _labels_options(prepare)
    prepare.add_argument("--images", help="folder the label file's image names are relative to")
    prepare.add_argument("--size", type=_at_least(8), default=300, help="side of the square images, pixels")
    prepare.add_argument("--quality", type=_at_least(1), default=95, help="JPEG quality of the written images")
    prepare.add_argument("--out", required=True, help="the folder for images/ (and its manifest.json)")
    prepare.add_argument("--workers", type=_at_least(0), default=None,
                         help="worker processes (default: this machine's cores)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(run=_prepare)


def build_parser() -> argparse.ArgumentParser:
    from elta_core import __version__

    parser = argparse.ArgumentParser(prog="elta", formatter_class=_HelpFormatter,
                                     description="ELTA long-tail enhancers for image aesthetics models.\n\n"
                                                 "examples:\n  elta demo --quick\n  elta synth --out data/\n"
                                                 "  elta stats data/labels.csv --format ava")
    parser.add_argument("--version", action="version", version=f"elta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_synth, _add_stats, _add_prepare, _add_train, _add_evaluate, _add_pseudo,
                _add_compare):
        add(commands)
    return parser


def _peer_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEER_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(PEER_NAMES)}, "
                                         f"got {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a method twice")
    return names


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    return parse


def _one_line(error: BaseException) -> str:
    """The error's message on one line; a DataLoader worker's re-raised error keeps only
    the original message, not the worker's traceback."""
    message = str(error).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1]
    return " ".join(message.split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "num_pairs", None) is not None and args.num_pairs >= 1:
        args.num_pairs = int(args.num_pairs)
    if getattr(args, "min_selected", None) is not None and args.min_selected >= 1:
        args.min_selected = int(args.min_selected)
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. `elta stats ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except (ValueError, OSError, FloatingPointError, ImportError) as error:
        print(f"elta {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - never a traceback for a user; ELTA_DEBUG=1 shows it
        if os.environ.get("ELTA_DEBUG"):
            raise
        print(f"elta {args.command}: error: {type(error).__name__}: {_one_line(error)} "
              "(set ELTA_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        _leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
