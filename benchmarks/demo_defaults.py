"""The demo's learning rate and length, measured on its own data: methods of ``elta
demo``, trained as the demo trains them, mean +- sample std over the seeds. baseline and
elta (TFA + FLSA) are scored on the demo's calibration split (1,000 images the demo never
tests on; neither method reads it); the APDS round and its control read the calibration
split (the grid search), so they are scored on a validation split of as many images
generated from the next data seed. The test split is not touched.

``python -m benchmarks.demo_defaults --lr 1e-3,2e-3,4e-3 --epochs 8,16 [--parallel 2]``
prints one markdown table (docs/design.md, "Defaults chosen by measurement");
``--methods elta --num-pairs 1 --flsa-weight 0.3`` measures ELTA's own settings, and
``--methods elta+apds,elta+round2-control --epochs 8 --round2-lr-divisor 4,40`` round 2's rate.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

METHODS = ("baseline", "elta")
ROUND2_METHODS = ("elta+apds", "elta+round2-control")  # read the calibration split
KEYS = (("plcc", "P"), ("mae_low", "L"), ("mae_high", "H"), ("mae", "MAE"))


def _scores(job: tuple[str, float, int, float, int, dict]) -> dict[str, float]:
    """One method at one (lr, epochs, round 2's divisor of lr, seed) and demo settings,
    scored on the calibration split, or for the round-2 methods on the validation split."""
    import tempfile
    from pathlib import Path

    import torch

    from elta_core import metrics
    from elta_core.app import demo
    from elta_core.data.synthetic import generate

    torch.set_num_threads(1)
    method, lr, epochs, divisor, seed, settings = job
    config = replace(demo.FULL, lr=lr, epochs=epochs, round2_lr=lr / divisor, seeds=(seed,), **settings)
    parts, scores = demo.demo_splits(config)
    if method in ROUND2_METHODS:
        validation = generate(config.calibration, config.image_size, seed=config.data_seed + 1)
        parts["test"], truth = demo._tensors(validation), validation.scores
    else:  # the calibration split, which these methods never read
        parts["test"], truth = parts["calibration"], scores["calibration"]
    with tempfile.TemporaryDirectory() as workdir:
        predicted, _ = demo._train_row(method, seed, parts, config, Path(workdir), progress=False)
    return metrics.evaluate(predicted, truth)


def table(lrs: list[float], lengths: list[int], seeds: list[int], parallel: int, methods=METHODS,
          settings: dict | None = None, divisors: list[float] | None = None) -> str:
    """``settings``: :class:`~elta_core.app.demo.DemoConfig` fields other than the demo's;
    ``divisors``: round 2's learning rates as lr / divisor (default: the demo's ratio)."""
    from elta_core.app.demo import FULL

    settings, divisors = settings or {}, divisors or [FULL.lr / FULL.round2_lr]
    grid = list(itertools.product(lrs, lengths, divisors))
    jobs = [(method, *point, seed, settings) for point in grid for method in methods for seed in seeds]
    with ProcessPoolExecutor(parallel) as pool:
        results = {job[:5]: scores for job, scores in zip(jobs, pool.map(_scores, jobs))}
    lines = ["| lr | epochs | round 2 lr | method | " + " | ".join(short for _, short in KEYS) + " |",
             "|---:|---:|---:|---|" + "---:|" * len(KEYS)]
    for lr, epochs, divisor in grid:
        for method in methods:
            rows = [results[(method, lr, epochs, divisor, seed)] for seed in seeds]
            cells = [f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows], ddof=1):.3f}"
                     for k, _ in KEYS]
            lines.append(f"| {lr:g} | {epochs} | lr / {divisor:g} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", default="1e-3,2e-3,4e-3")
    parser.add_argument("--epochs", default="8,16")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of {', '.join(METHODS + ROUND2_METHODS)}")
    parser.add_argument("--round2-lr-divisor", default=None,
                        help="round 2's learning rates, as lr / each of these (default: the demo's)")
    parser.add_argument("--num-pairs", type=float, default=None, help="TFA pairs (default: the demo's)")
    parser.add_argument("--flsa-weight", type=float, default=None, help="FLSA weight (default: the demo's)")
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if not methods or set(methods) - set(METHODS + ROUND2_METHODS):
        parser.error(f"--methods: expected a comma-separated list of {', '.join(METHODS + ROUND2_METHODS)}, "
                     f"got {args.methods!r}")
    settings = {name: value for name, value in (("num_pairs", args.num_pairs), ("flsa_weight", args.flsa_weight))
                if value is not None}
    lrs = [float(value) for value in args.lr.split(",")]
    lengths = [int(value) for value in args.epochs.split(",")]
    if args.seeds < 2:
        parser.error(f"--seeds: a standard deviation needs at least 2, got {args.seeds}")
    divisors = [float(value) for value in args.round2_lr_divisor.split(",")] if args.round2_lr_divisor else None
    if divisors and not all(value > 0 for value in divisors):
        parser.error(f"--round2-lr-divisor: expected numbers > 0, got {args.round2_lr_divisor!r}")
    print(table(lrs, lengths, list(range(args.seeds)), args.parallel, methods, settings, divisors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
