"""Round 2's mode and length (``--round2``, ``--round2-epochs``) measured on the real-image
benchmark (:mod:`benchmarks.real_images`), on its validation split.

Each variant trains the APDS round alone: from each seed's ``elta`` round 1 of a finished
benchmark (``--round1-from``), so a variant costs its round-2 epochs, not round 1's 60.
``elta+apds`` and its control (the same round 2 without pseudo-labels) for each length; the
control keeps no pseudo-label, so its ``concat`` and ``separate`` runs are one run, trained
once. The validation split is also APDS's calibration set, which favours ``elta+apds``
slightly against the control here (the benchmark's test split has no such bias).

``python -m benchmarks.round2_probe --benchmark elta_real_images --out elta_round2_probe``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.real_images import VALIDATION_KEYS, mean_std_cells, train_arguments, validate_run

DEFAULT_VARIANTS = "concat:5,concat:10,concat:20,separate:10,separate:20"
APDS, CONTROL = "elta+apds", "elta+round2-control"
METHODS = (APDS, CONTROL)


def parse_variants(text: str) -> list[tuple[str, int]]:
    """``MODE:EPOCHS,...`` as (mode, epochs) pairs."""
    from elta_core.pseudo_labels import ROUND2_MODES

    variants = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        mode, _, epochs = item.partition(":")
        if mode not in ROUND2_MODES or not epochs.isdigit() or int(epochs) < 1:
            raise ValueError(f"variants: expected MODE:EPOCHS items with MODE in {', '.join(ROUND2_MODES)} and "
                             f"EPOCHS >= 1, got {item!r}")
        variants.append((mode, int(epochs)))
    if not variants:
        raise ValueError("variants: expected at least one MODE:EPOCHS item")
    return variants


def run_key(mode: str, epochs: int, method: str, seed: int) -> tuple[str, int, str, int]:
    """The run that trains this (variant, method, seed): the control keeps no pseudo-label,
    so the mode changes nothing for it."""
    return ("concat" if method == CONTROL else mode), epochs, method, seed


def train_variant(arguments: list[str], benchmark: str, out: str, mode: str, epochs: int, method: str,
                  seed: int) -> dict:
    """One pool process's task: the APDS round of ``method`` with ``seed`` from the
    benchmark's ``elta`` round 1, and its validation-split metrics."""
    from elta_core.app.config import train_settings
    from elta_core.app.methods import METHODS as SETTINGS
    from elta_core.app.run import train

    folder = Path(out) / f"{mode}{epochs}" / method / f"seed{seed}"
    donor = Path(benchmark) / "compare" / "runs" / "elta" / f"seed{seed}"
    settings = train_settings(arguments).replace(**SETTINGS[method], round2=mode, round2_epochs=epochs, seed=seed,
                                                 round1_from=str(donor), out=str(folder), resume=True, quiet=True,
                                                 threads=1)
    if not (folder / "metrics.json").is_file():  # a finished variant is read back (its round 2 is not repeated)
        train(settings)
    return validate_run(Path(benchmark) / "data", folder)


def table(results: dict[tuple[str, int, str, int], dict], variants: list[tuple[str, int]], seeds: list[int]) -> str:
    """Mean ± std per variant and method, and elta+apds minus its control, paired by seed."""
    from elta_core.comparison import paired_difference

    shorts = [short for _, short in VALIDATION_KEYS]
    lines = ["| round 2 | method | " + " | ".join(shorts) + " | apds - control: ΔL | ΔH |",
             "|---|---|" + "---:|" * (len(shorts) + 2)]
    for mode, epochs in variants:
        rows = {m: [results[mode, epochs, m, s] for s in seeds] for m in METHODS}
        gaps = [paired_difference([r[key] for r in rows[APDS]], [r[key] for r in rows[CONTROL]])
                for key in ("mae_low", "mae_high")]
        for method in METHODS:
            extra = [gap.describe() for gap in gaps] if method == APDS else ["", ""]
            lines.append(f"| {mode}, {epochs} epoch{'s' * (epochs != 1)} | {method} | " + " | ".join(mean_std_cells(rows[method]) + extra)
                         + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from elta_core.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="elta_real_images", help="a finished benchmarks.real_images --out")
    parser.add_argument("--out", default="elta_round2_probe")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="MODE:EPOCHS, comma-separated")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60, help="the benchmark's round 1 (its --epochs)")
    parser.add_argument("--parallel", type=int, default=2, help="processes, one torch thread each")
    args = parser.parse_args(argv)
    variants, seeds, benchmark = parse_variants(args.variants), list(range(args.seeds)), Path(args.benchmark)
    missing = [s for s in seeds if not (benchmark / "compare" / "runs" / "elta" / f"seed{s}" / "metrics.json").is_file()]
    if missing:
        raise ValueError(f"benchmark: {benchmark} has no finished elta run for seeds {missing}; run "
                         f"python -m benchmarks.real_images --out {benchmark} first")
    data = benchmark / "data"
    arguments = train_arguments(data, args.epochs, data / "pool.csv")
    keys = {(mode, epochs, method, seed): run_key(mode, epochs, method, seed)
            for mode, epochs in variants for method in METHODS for seed in seeds}
    tasks = sorted(set(keys.values()), key=lambda task: -task[1])  # the longest first
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        futures = {task: pool.submit(train_variant, arguments, str(benchmark), args.out, *task) for task in tasks}
        done = {}
        for k, (task, future) in enumerate(futures.items(), start=1):
            done[task] = future.result()
            print(f"round2_probe: {k}/{len(tasks)}: {task[2]}, {task[0]} {task[1]} epochs, seed {task[3]}", flush=True)
    text = table({variant: done[run] for variant, run in keys.items()}, variants, seeds)
    atomic_write_text(Path(args.out) / "round2.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
