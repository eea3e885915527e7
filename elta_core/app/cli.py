"""The ``elta`` command: ``demo``, ``synth``, ``stats``, ``prepare``, ``train``, ``evaluate``, ``pseudo-label``,
``doctor``, ``compare``.

Each command's settings are a dataclass of :mod:`elta_core.app.config`, and its options
are generated from that dataclass's fields. Frameworks are imported by the command that
needs them, so ``elta stats`` runs with NumPy alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from elta_core.app import config
from elta_core.app.methods import DEFAULT_METHODS, METHODS, parse_methods


def _synth(settings: config.SynthConfig) -> int:
    from elta_core.data.synthetic import SPLIT_FILES, export, generate

    path = export(generate(settings.count, settings.image_size, seed=settings.seed), settings.out,
                  splits=settings.split, seed=settings.seed)
    print(f"{settings.count} images in {Path(settings.out) / 'images'}, labels in {path} (--format ava)")
    if settings.split:
        print(f"splits in {', '.join(str(Path(settings.out) / name) for name in SPLIT_FILES)}")
    return 0


def _stats(settings: config.StatsConfig) -> int:
    from elta_core.data import load_labels, long_tail_summary

    table = load_labels(settings.labels, settings.format, **settings.csv_options())
    summary = long_tail_summary(table)
    if settings.json:
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
    if settings.plot:
        _plot_histogram(summary, Path(settings.plot), settings.format)
        if not settings.json:
            print(f"histogram saved to {settings.plot}")
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


def _demo(settings: config.DemoCommand) -> int:
    from elta_core.optional import require

    for module, extra in (("torch", "torch"), ("tqdm", "torch"), ("matplotlib", "plot")):
        require(module, extra)
    from elta_core.app.demo import FULL, QUICK, describe, run_demo

    report = run_demo(QUICK if settings.quick else FULL, settings.out, progress=not settings.quiet,
                      threads=settings.threads)
    print(describe(report))
    return 0


def _doctor(settings: config.DoctorConfig) -> int:
    from elta_core.optional import require

    require("torch", "torch")
    import torch

    from elta_core.app import doctor
    from elta_core.app.training import _device

    devices = [_device(settings.device)] if settings.device else \
        [torch.device("cpu")] + [torch.device("cuda", k) for k in range(torch.cuda.device_count())]
    backend = None if settings.compile_backend == "none" else settings.compile_backend
    checks = doctor.run_checks(devices, quick=settings.quick, compile_backend=backend,
                               progress=(lambda _: None) if settings.quiet else (lambda line: print(line, flush=True)))
    if not checks:
        print("elta doctor: no fused kernel runs on " + ", ".join(map(str, devices)) + " (the reference runs "
              "everywhere): build the native kernels (a C++ compiler at install time) or use a CUDA GPU with Triton")
        return 0
    print(doctor.table(checks))
    if settings.json:
        from elta_core.io import atomic_write_json

        atomic_write_json(settings.json, doctor.as_json(checks))
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed" + (
        "; the failures above run the reference instead if you set ELTA_TRITON=0 / ELTA_NATIVE=0" if failed else ""))
    return 1 if failed else 0


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


def _train(settings: config.TrainConfig) -> int:
    _needs_vision()
    from elta_core.app.training import format_metrics, train

    result = train(settings)
    if result and _is_main():
        print(format_metrics(result))
        out = Path(settings.out)
        best = f", best epoch {result['best_epoch']}" if "best_epoch" in result else ""
        print(f"test metrics of {out / result['checkpoint']}{best} in {out / 'metrics.json'}; per-image predictions "
              f"in predictions.csv and predictions.png; per-epoch metrics in metrics.csv")
    return 0


def _evaluate(settings: config.EvaluateConfig) -> int:
    _needs_vision()
    from elta_core.app.training import evaluate, format_metrics

    result = evaluate(settings)
    if _is_main():
        print(format_metrics(result))
    return 0


def train_settings(arguments: list[str]) -> config.TrainConfig:
    """``elta train`` arguments as a :class:`~elta_core.app.config.TrainConfig` (argparse
    errors exit with status 2, as on the command line)."""
    namespace = settings_parser(config.TrainConfig, "elta compare -- (elta train arguments)").parse_args(arguments)
    return config.from_namespace(config.TrainConfig, namespace)


def _compare(settings: config.CompareConfig) -> int:
    _needs_vision()
    from elta_core.app.compare import check_train_arguments, compare

    methods = parse_methods(",".join(DEFAULT_METHODS) if settings.methods is None else settings.methods)
    arguments = [a for a in settings.train_arguments if a != "--"]
    check_train_arguments(arguments)
    if not arguments:  # the built-in dataset, written once under --out
        from elta_core.data.synthetic import export, generate

        count, size, epochs = (160, 32, 2) if settings.quick else (600, 32, 4)
        data = Path(settings.out) / "data"
        if not (data / "labels.csv").exists():
            export(generate(count, size, seed=2024), data)
        arguments = ["--labels", str(data / "labels.csv"), "--format", "ava", "--images", str(data / "images"),
                     "--backbone", "resnet18", "--image-size", str(size), "--epochs", str(epochs),
                     "--batch-size", "32", "--val-fraction", "0.25"]
    seeds = list(range(settings.seeds if settings.seeds is not None else (2 if settings.quick else 3)))
    base = train_settings(arguments)
    if settings.threads is not None:
        base = base.replace(threads=settings.threads)
    report = compare(base, methods, seeds, settings.out, progress=not settings.quiet, train_arguments=arguments)
    print(report["markdown"])
    if settings.quick:
        print("--quick is a smoke test (160 images, 2 epochs, 2 seeds): it shows that every method runs, not which "
              "is better; run without --quick, with 5 or more seeds, for a comparison.")
    print("written: " + ", ".join(report["paths"].values()))
    return 0


def _prepare(settings: config.PrepareConfig) -> int:
    _needs_vision()
    from elta_core.app.prepare import prepare
    from elta_core.app.training import default_workers
    from elta_core.data import load_labels

    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    workers = default_workers() if settings.workers is None else settings.workers
    result = prepare(table, settings.images, settings.out, settings.size, quality=settings.quality, workers=workers,
                     progress=not settings.quiet)
    print(f"{result['written']} images resized to {settings.size} x {settings.size} ({result['already_there']} already "
          f"there) in {result['folder']}: train with --images {result['folder']}")
    if result["unreadable"]:
        print(f"{len(result['unreadable'])} unreadable image(s) not prepared, e.g. {result['unreadable'][0]}")
    return 0


def _pseudo_label(settings: config.PseudoLabelConfig) -> int:
    _needs_vision()
    from elta_core.app.training import pseudo_label

    result = pseudo_label(settings)
    if not _is_main():
        return 0
    print(result["grid"].to_markdown())
    print(f"beta* {result['grid'].beta:g}, t* {result['grid'].threshold:g}: "
          f"{result['num_selected']} of {result['pool']} pool images pseudo-labelled -> {result['path']}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (where there is one); descriptions and examples kept
    as written."""

    def _get_help_string(self, action):
        # "is": a default of 0 (--seed) is a default worth showing, False and None are not
        if action.default is None or action.default is False or action.default in ((), []) or action.required:
            return action.help
        return super()._get_help_string(action)


# name: (settings, run, summary, description, example)
COMMANDS: dict[str, tuple[type, Callable[[Any], int], str, str, str]] = {
    "demo": (config.DemoCommand, _demo, "baseline vs ELTA and two established methods on the built-in synthetic "
             "dataset (CPU)",
             "A small elta compare: trains a small CNN the ways of the paper's Table 4 (baseline, +TFA, +FLSA, "
             "+TFA+FLSA, +TFA+FLSA+APDS),\nthe control for APDS (the same round 2 without pseudo-labels) and "
             "LDS and RankSim alone, over 3 seeds on a generated\nlong-tailed dataset; prints P, S, accuracy, "
             "MSE, L, M, H and each row's paired difference to the baseline with its 95 %\ninterval; writes "
             "table.md, results.json and figure.png.", "elta demo --quick"),
    "synth": (config.SynthConfig, _synth, "write the built-in synthetic dataset as images and an AVA-format CSV",
              "Generates long-tailed synthetic aesthetics images with vote counts, to try the other "
              "commands without a dataset of your own.", "elta synth --out data/ --count 200"),
    "stats": (config.StatsConfig, _stats, "long-tail summary of a label file",
              "Counts per score bin (the paper's Figure 1 bins), the middle-60 % interval and the share "
              "of images in [4, 7);\nscores on other scales are mapped to 1..10.",
              "elta stats AVA.csv --format ava --plot hist.png"),
    "prepare": (config.PrepareConfig, _prepare, "resize a label file's images once, for faster training",
                "Writes every image of the label file resized to --size x --size (the first step of the\n"
                "training transform; the authors resize to 300 x 300) under OUT/images with the same\n"
                "names; train on them with --images OUT/images. Resumable; JPEG re-encoded at --quality.",
                "elta prepare --labels AVA.csv --format ava --images AVA/images --size 300 --out AVA300"),
    "train": (config.TrainConfig, _train, "train a torchvision or timm backbone with TFA / FLSA / APDS",
              "Trains a torchvision or timm model with a distribution (or score) head on a label file and\n"
              "its images, with TFA and FLSA on by default (--no-tfa --flsa 0 for the baseline),\n"
              "checkpointing every epoch (--checkpoint-every) into --out (resumable with --resume),\n"
              "validating every epoch when there is a validation set, then evaluating on the test set\n"
              "(metrics.json, metrics.csv, predictions.csv). --recipe paper sets the authors' training\n"
              "recipe; any flag overrides it.",
              "elta train --labels data/labels.csv --format ava --images data/images --out runs/r18"),
    "evaluate": (config.EvaluateConfig, _evaluate, "P, S, accuracy, L, M, H of a checkpoint",
                 "Evaluates a checkpoint written by elta train on a label file (or one split of it).",
                 "elta evaluate --checkpoint runs/r18/checkpoint.pt --labels data/labels.csv --format ava "
                 "--images data/images"),
    "pseudo-label": (config.PseudoLabelConfig, _pseudo_label, "APDS grid search and pseudo-labels for an unlabelled "
                     "pool",
                     "Picks (beta, t) on a labelled calibration file, then writes pseudo_labels.csv\n(image, "
                     "score, p_1..p_C) for the confident images of an unlabelled pool.",
                     "elta pseudo-label --checkpoint runs/r18/checkpoint.pt --calibration data/labels.csv "
                     "--format ava --images data/images --unlabelled data/images"),
    "doctor": (config.DoctorConfig, _doctor, "check the fused kernels on this machine against the reference",
               "Runs every kernel that runs here (Triton on a CUDA GPU, native on the CPU) against the\n"
               "float64 reference at representative shapes, times it against the reference eager and\n"
               "under torch.compile, and on a GPU checks that a training step never waits for the host.\n"
               "Exits 1 on any mismatch.",
               "elta doctor --json doctor.json"),
    "compare": (config.CompareConfig, _compare, "the same model trained with each method and seed, compared honestly",
                "Runs elta train once per method and seed (same data, splits and seeds; each run resumable\n"
                "in OUT/runs/METHOD/seedN), then writes compare.md, compare.json and compare.png: P, S,\n"
                "accuracy, MSE, L, M, H as mean +- std, and each method's paired difference to the first\n"
                "method with its 95 % Student-t interval. The elta train arguments follow `--`; without\n"
                "them, the built-in synthetic dataset is used. Methods: " + ", ".join(METHODS) + ".",
                "elta compare --methods baseline,elta --seeds 5 --out cmp -- --labels data/labels.csv "
                "--format ava --images data/images --epochs 10"),
}


def settings_parser(cls: type, prog: str) -> argparse.ArgumentParser:
    """A parser for one command's settings alone (``elta compare`` parses the shared train
    arguments with it)."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=_HelpFormatter)
    config.add_options(parser, cls)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from elta_core import __version__

    parser = argparse.ArgumentParser(prog="elta", formatter_class=_HelpFormatter,
                                     description="ELTA long-tail enhancers for image aesthetics models.\n\n"
                                                 "examples:\n  elta demo --quick\n  elta synth --out data/\n"
                                                 "  elta stats data/labels.csv --format ava")
    parser.add_argument("--version", action="version", version=f"elta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (settings, _, summary, description, example) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=f"{description}\n\nexample:\n  {example}",
                                  formatter_class=_HelpFormatter)
        config.add_options(sub, settings)
    return parser


def _one_line(error: BaseException) -> str:
    """The error's message on one line; a DataLoader worker's re-raised error keeps only
    the original message, not the worker's traceback."""
    message = str(error).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1]
    return " ".join(message.split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings_class, run = COMMANDS[args.command][:2]
    try:
        return run(config.from_namespace(settings_class, args))
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
