"""The ``elta`` command: ``demo``, ``stats``, ``train``, ``evaluate``, ``pseudo-label``.

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
from elta_core.step import DEFAULT_NUM_PAIRS


def _stats(args: argparse.Namespace) -> int:
    from elta_core.data import load_labels, long_tail_summary

    table = load_labels(args.labels, args.format)
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
        _plot_histogram(summary, Path(args.plot))
        if not args.json:
            print(f"histogram saved to {args.plot}")
    return 0


def _plot_histogram(summary: dict, path: Path) -> None:
    from elta_core.app.plotting import pyplot, save_png

    fig, axis = pyplot().subplots(figsize=(7, 4))
    axis.bar(summary["bins"], summary["counts"], color="#4c72b0")
    axis.set_xlabel("mean score (1..10)")
    axis.set_ylabel("images")
    axis.set_title(f"{Path(summary['source']).name}: {summary['total']} images")
    fig.tight_layout()
    save_png(fig, path)


def _demo(args: argparse.Namespace) -> int:
    from elta_core.app.demo import FULL, QUICK, describe, run_demo

    config = QUICK if args.quick else FULL
    report = run_demo(config, args.out, progress=not args.quiet)
    print(describe(report))
    return 0


def _train(args: argparse.Namespace) -> int:
    from elta_core.app.training import format_metrics, train

    result = train(args)
    if result:
        print(format_metrics(result))
        print(f"metrics written to {Path(args.out) / 'metrics.json'} and metrics.csv")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from elta_core.app.training import evaluate, format_metrics

    result = evaluate(args)
    print(format_metrics(result))
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from elta_core.app.training import pseudo_label

    result = pseudo_label(args)
    print(result["grid"].to_markdown())
    print(f"beta* {result['grid'].beta:g}, t* {result['grid'].threshold:g}: "
          f"{result['num_selected']} of {result['pool']} pool images pseudo-labelled -> {result['path']}")
    return 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _apds_options(parser: argparse.ArgumentParser) -> None:
    from elta_core import apds

    parser.add_argument("--betas", type=_floats, default=apds.DEFAULT_BETAS, help="APDS betas, comma-separated")
    parser.add_argument("--thresholds", type=_floats, default=apds.DEFAULT_THRESHOLDS,
                        help="APDS thresholds in (0, 1], comma-separated")
    parser.add_argument("--min-selected", type=float, default=apds.DEFAULT_MIN_SELECTED, help="a count, or a fraction of the calibration set")
    parser.add_argument("--pseudo-label", choices=("sharpened", "prediction"), default=apds.DEFAULT_PSEUDO_LABEL,
                        help="train on the sharpened distribution (Eq. 10) or the unsharpened prediction "
                             "(the authors' code)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", help="folder the label file's image names are relative to")
    parser.add_argument("--batch-size", type=_at_least(1), default=32)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--skip-unreadable", action="store_true", help="skip missing or corrupt images and report how many")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="baseline vs ELTA on the built-in synthetic dataset (CPU)")
    demo.add_argument("--quick", action="store_true", help="a smaller run (about 35 s on 2 idle cores)")
    demo.add_argument("--out", default="elta_demo", help="where table.md, results.json and figure.png go")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=_demo)


def _add_stats(commands) -> None:
    stats = commands.add_parser("stats", help="long-tail summary of a label file")
    stats.add_argument("labels")
    stats.add_argument("--format", required=True, choices=FORMATS)
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--plot", metavar="FILE.png")
    stats.set_defaults(run=_stats)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a torchvision backbone with TFA / FLSA / APDS")
    train.add_argument("--labels", required=True)
    train.add_argument("--format", required=True, choices=FORMATS)
    _common(train)
    train.add_argument("--backbone", default="resnet18", help="a torchvision model name")
    train.add_argument("--weights", help="local state dict to start from (no downloads)")
    train.add_argument("--tfa", action="store_true", help="Tail Feature Augmentation")
    train.add_argument("--num-pairs", type=float, default=DEFAULT_NUM_PAIRS,
                       help="TFA pairs: a count (>= 1) or a fraction of the batch")
    train.add_argument("--flsa", type=float, default=0.0, metavar="WEIGHT", help="FLSA weight gamma (0: off)")
    train.add_argument("--apds", action="store_true", help="one APDS self-training round after training")
    train.add_argument("--unlabelled", help="for --apds: a folder of images or a label file (labels ignored)")
    train.add_argument("--unlabelled-format", choices=FORMATS)
    train.add_argument("--calibration", help="for --apds: a labelled file for the grid search "
                       "(default: the held-out evaluation split)")
    train.add_argument("--calibration-format", choices=FORMATS)
    train.add_argument("--round2-epochs", type=_at_least(1), default=1)
    train.add_argument("--round2", choices=ROUND2_MODES, default=DEFAULT_ROUND2,
                       help="Eq. 10: concat (pseudo-labelled images join the training set, with TFA and FLSA) or "
                            "separate (their task loss on separate batches)")
    _apds_options(train)
    train.add_argument("--epochs", type=_at_least(1), default=10)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--image-size", type=_at_least(8), default=224)
    train.add_argument("--val-fraction", type=float, default=0.1, help="held out when the file has no split")
    train.add_argument("--workers", type=_at_least(0), default=0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="elta_runs/train")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--stop-after-epoch", type=int, default=0, help=argparse.SUPPRESS)
    train.set_defaults(run=_train)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="P, S, accuracy, L, M, H of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--labels", required=True)
    evaluate.add_argument("--format", required=True, choices=FORMATS)
    evaluate.add_argument("--split", help="evaluate only this split of the file (e.g. test)")
    evaluate.add_argument("--out", help="write evaluation.json and evaluation.csv here")
    _common(evaluate)
    evaluate.set_defaults(run=_evaluate)


def _add_pseudo(commands) -> None:
    pseudo = commands.add_parser("pseudo-label", help="APDS grid search and pseudo-labels for an unlabelled pool")
    pseudo.add_argument("--checkpoint", required=True)
    pseudo.add_argument("--calibration", required=True, help="labelled calibration file")
    pseudo.add_argument("--format", required=True, choices=FORMATS)
    pseudo.add_argument("--unlabelled", required=True, help="a folder of images or a label file")
    pseudo.add_argument("--unlabelled-format", choices=FORMATS)
    _apds_options(pseudo)
    pseudo.add_argument("--image-size", type=int, default=None, help=argparse.SUPPRESS)
    pseudo.add_argument("--out", default="elta_runs/pseudo_labels")
    _common(pseudo)
    pseudo.set_defaults(run=_pseudo_label)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elta", description="ELTA long-tail enhancers for image aesthetics models.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo(commands)
    _add_stats(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_pseudo(commands)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
