"""The ``elta`` command: ``demo``, ``synth``, ``stats``, ``prepare``, ``train``, ``evaluate``, ``predict``,
``pseudo-label``, ``export``, ``doctor``, ``compare``.

Each command's settings are a dataclass of :mod:`elta_core.app.config`, and its options
are generated from that dataclass's fields; what it runs is in :mod:`elta_core.app.commands`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from elta_core.app import commands, config, options
from elta_core.app.options import HelpFormatter
from elta_core.app.methods import METHODS, search_space_help


# name: (settings, run, summary, description, example)
COMMANDS: dict[str, tuple[type, Callable[[Any], int], str, str, str]] = {
    "demo": (config.DemoCommand, commands.run_demo, "baseline vs ELTA and two established methods on the built-in "
             "synthetic dataset (CPU)",
             "A small elta compare: trains a small CNN the ways of the paper's Table 4 (baseline, +TFA, +FLSA, "
             "+TFA+FLSA, +TFA+FLSA+APDS),\nthe control for APDS (the same round 2 without pseudo-labels) and "
             "LDS and RankSim alone, over 3 seeds on a generated\nlong-tailed dataset; prints P, S, accuracy, "
             "MSE, L, M, H and each row's paired difference to the baseline with its 95 %\ninterval; writes "
             "table.md, results.json and figure.png.", "elta demo --quick"),
    "synth": (config.SynthConfig, commands.run_synth, "write the built-in synthetic dataset as images and an "
              "AVA-format CSV",
              "Generates long-tailed synthetic aesthetics images with vote counts, to try the other "
              "commands without a dataset of your own.", "elta synth --out data/ --count 200"),
    "stats": (config.StatsConfig, commands.run_stats, "long-tail summary of a label file",
              "Counts per score bin (the paper's Figure 1 bins), the middle-60 % interval and the share "
              "of images in [4, 7);\nscores on other scales are mapped to 1..10.",
              "elta stats AVA.csv --format ava --plot hist.png"),
    "prepare": (config.PrepareConfig, commands.run_prepare, "resize a label file's images once, for faster training",
                "Writes every image of the label file resized to --size x --size (the first step of the\n"
                "training transform; the authors resize to 300 x 300) under OUT/images with the same\n"
                "names; train on them with --images OUT/images. Resumable; JPEG re-encoded at --quality.",
                "elta prepare --labels AVA.csv --format ava --images AVA/images --size 300 --out AVA300"),
    "train": (config.TrainConfig, commands.run_train, "train a torchvision or timm backbone with TFA / FLSA / APDS",
              "Trains a torchvision or timm model with a distribution (or score) head on a label file and\n"
              "its images, with TFA and FLSA on by default (--no-tfa --flsa 0 for the baseline),\n"
              "checkpointing every epoch (--checkpoint-every) into --out (resumable with --resume),\n"
              "validating every epoch when there is a validation set, then evaluating on the test set\n"
              "(metrics.json, metrics.csv, predictions.csv). --recipe paper sets the authors' training\n"
              "recipe; any flag overrides it.",
              "elta train --labels data/labels.csv --format ava --images data/images --out runs/r18"),
    "evaluate": (config.EvaluateConfig, commands.run_evaluate, "P, S, accuracy, L, M, H of a checkpoint",
                 "Evaluates a checkpoint written by elta train on a label file (or one split of it).",
                 "elta evaluate --checkpoint runs/r18/checkpoint.pt --labels data/labels.csv --format ava "
                 "--images data/images"),
    "predict": (config.PredictConfig, commands.run_predict, "score a folder of photos with a trained checkpoint",
                "Writes each image's predicted score (the mean of the predicted distribution over the rating\n"
                "levels, its standard deviation and the distribution itself) to a CSV, with the checkpoint's own\n"
                "evaluation preprocessing. Images: a folder (recursively, sorted) or a label file's list.",
                "elta predict --checkpoint runs/r18/checkpoint.pt --images photos/ --out scores.csv"),
    "pseudo-label": (config.PseudoLabelConfig, commands.run_pseudo_label, "APDS grid search and pseudo-labels for "
                     "an unlabelled pool",
                     "Picks (beta, t) on a labelled calibration file, then writes pseudo_labels.csv\n(image, "
                     "score, p_1..p_C) for the confident images of an unlabelled pool.",
                     "elta pseudo-label --checkpoint runs/r18/checkpoint.pt --calibration data/labels.csv "
                     "--format ava --images data/images --unlabelled data/images"),
    "export": (config.ExportConfig, commands.run_export, "a checkpoint as a model that loads without elta_core",
               "Writes the weights as safetensors, elta_model.json (the backbone's timm or torchvision name,\n"
               "the head, the rating scale, the evaluation transform) and load_elta_model.py, a loader that\n"
               "needs only torch, torchvision and safetensors (and timm for a timm backbone).",
               "elta export --checkpoint runs/r18/checkpoint.pt --out r18_export"),
    "doctor": (config.DoctorConfig, commands.run_doctor, "check the fused kernels on this machine against the "
               "reference",
               "Runs every kernel that runs here (Triton on a CUDA GPU, native on the CPU) against the\n"
               "float64 reference at representative shapes, times it against the reference eager and\n"
               "under torch.compile, and on a GPU checks that a training step never waits for the host.\n"
               "Exits 1 on any mismatch.",
               "elta doctor --json doctor.json"),
    "compare": (config.CompareConfig, commands.run_compare, "the same model trained with each method and seed, "
                "compared honestly",
                "Runs elta train once per method and seed (same data, splits and seeds; each run resumable\n"
                "in OUT/runs/METHOD/seedN), then writes compare.md, compare.json and compare.png: P, S,\n"
                "accuracy, MSE, L, M, H as mean +- std, and each method's paired difference to the first\n"
                "method with its 95 % Student-t interval. The elta train arguments follow `--`; without\n"
                "them, the built-in synthetic dataset is used. Methods: " + ", ".join(METHODS) + ".\n\n"
                "--tune first chooses each method's main settings on the validation split under one budget of\n"
                "trials (OUT/tuning/, OUT/tuning.md), then trains every seed at the chosen setting. Search\n"
                "spaces, tried in this order (the default first; the baseline has nothing to tune; an APDS\n"
                "method takes the setting chosen for the method that trains its round 1):\n"
                + search_space_help(),
                "elta compare --methods baseline,elta --seeds 5 --out cmp -- --labels data/labels.csv "
                "--format ava --images data/images --epochs 10\n  elta compare --methods baseline,elta,ranksim "
                "--tune --out tuned -- --labels data/train.csv --val-labels data/val.csv --test-labels "
                "data/test.csv --format ava --images data/images"),
}


def build_parser() -> argparse.ArgumentParser:
    from elta_core import __version__

    parser = argparse.ArgumentParser(prog="elta", formatter_class=HelpFormatter,
                                     description="ELTA long-tail enhancers for image aesthetics models.\n\n"
                                                 "examples:\n  elta demo --quick\n  elta synth --out data/\n"
                                                 "  elta stats data/labels.csv --format ava")
    parser.add_argument("--version", action="version", version=f"elta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (settings, _, summary, description, example) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=f"{description}\n\nexample:\n  {example}",
                                  formatter_class=HelpFormatter)
        options.add_options(sub, settings)
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
        return run(options.from_namespace(settings_class, args))
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
        commands.leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
