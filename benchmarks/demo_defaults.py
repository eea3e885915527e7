"""The demo's learning rate and length, measured on its own data: baseline and elta
(TFA + FLSA) of ``elta demo``, trained as the demo trains them, scored on the demo's
calibration split (1,000 images the demo never tests on; neither method reads it), mean
+- sample std over the seeds. The test split is not touched.

``python -m benchmarks.demo_defaults --lr 1e-3,2e-3,4e-3 --epochs 8,16 [--parallel 2]``
prints one markdown table (docs/design.md, "Defaults chosen by measurement");
``--methods elta --num-pairs 1 --flsa-weight 0.3`` measures ELTA's own settings.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

METHODS = ("baseline", "elta")
KEYS = (("plcc", "P"), ("mae_low", "L"), ("mae_high", "H"), ("mae", "MAE"))


def _scores(job: tuple[str, float, int, int, dict]) -> dict[str, float]:
    """One method at one (lr, epochs, seed) and demo settings, scored on the calibration split."""
    import tempfile
    from pathlib import Path

    import torch

    from elta_core import metrics
    from elta_core.app import demo

    torch.set_num_threads(1)
    method, lr, epochs, seed, settings = job
    config = replace(demo.FULL, lr=lr, epochs=epochs, seeds=(seed,), **settings)
    parts, scores = demo.demo_splits(config)
    parts["test"] = parts["calibration"]  # scored on the calibration split, which these methods never read
    with tempfile.TemporaryDirectory() as workdir:
        predicted, _ = demo._train_row(method, seed, parts, config, Path(workdir), progress=False)
    return metrics.evaluate(predicted, scores["calibration"])


def table(lrs: list[float], lengths: list[int], seeds: list[int], parallel: int, methods=METHODS,
          settings: dict | None = None) -> str:
    """``settings``: :class:`~elta_core.app.demo.DemoConfig` fields other than the demo's."""
    settings = settings or {}
    jobs = [(method, lr, epochs, seed, settings) for lr, epochs in itertools.product(lrs, lengths)
            for method in methods for seed in seeds]
    with ProcessPoolExecutor(parallel) as pool:
        results = {job[:4]: scores for job, scores in zip(jobs, pool.map(_scores, jobs))}
    lines = ["| lr | epochs | method | " + " | ".join(short for _, short in KEYS) + " |",
             "|---:|---:|---|" + "---:|" * len(KEYS)]
    for lr, epochs in itertools.product(lrs, lengths):
        for method in methods:
            rows = [results[(method, lr, epochs, seed)] for seed in seeds]
            cells = [f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows], ddof=1):.3f}"
                     for k, _ in KEYS]
            lines.append(f"| {lr:g} | {epochs} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", default="1e-3,2e-3,4e-3")
    parser.add_argument("--epochs", default="8,16")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--methods", default=",".join(METHODS), help="baseline, elta, or both")
    parser.add_argument("--num-pairs", type=float, default=None, help="TFA pairs (default: the demo's)")
    parser.add_argument("--flsa-weight", type=float, default=None, help="FLSA weight (default: the demo's)")
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if not methods or set(methods) - set(METHODS):
        parser.error(f"--methods: expected a comma-separated list of {', '.join(METHODS)}, got {args.methods!r}")
    settings = {name: value for name, value in (("num_pairs", args.num_pairs), ("flsa_weight", args.flsa_weight))
                if value is not None}
    lrs = [float(value) for value in args.lr.split(",")]
    lengths = [int(value) for value in args.epochs.split(",")]
    if args.seeds < 2:
        parser.error(f"--seeds: a standard deviation needs at least 2, got {args.seeds}")
    print(table(lrs, lengths, list(range(args.seeds)), args.parallel, methods, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
