"""A real-image benchmark that runs offline: scikit-learn's bundled handwritten digits
(1,797 real 8 x 8 scans, the one real image set available without a download) written as
JPEG files with AVA-style vote counts, regressed as a 1..10 score around digit + 1.

The splits are long-tailed as aesthetics data is (most images in the middle of the
scale, few at its ends), seeded, and disjoint:

- ``train.csv``: long-tailed, about 430 images, the rarest scores 6 images each;
- ``val.csv``: 15 per score, for choosing settings (never the test split);
- ``pool.csv``: a long-tailed unlabelled pool for APDS (its labels are never read);
- ``test.csv``: tail-heavy, 30 per score, so the 20 % tails L and H hold 60 images each.

``python -m benchmarks.real_images --out DIR`` writes the data and runs ``elta compare``
on it: each (method, seed) run in a pool of two processes on two cores (one torch thread
each), the runs that train round 1 first, each APDS run from its seed's ``elta`` round 1
(``--round1-from``) once that is done; each run is evaluated on the validation split in
its process. Then it writes the tables (``DIR/compare/compare.md``, ``.json``, ``.png``,
``validation.md``). A killed benchmark resumes run by run. ``--write-only`` writes the
data alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from elta_core.io import atomic_write_text
from elta_core.peer_names import PEER_NAMES

LEVELS = 10
VOTERS = 60
SIDE = 32  # the files; training crops IMAGE_SIZE (the digits are 8 x 8 scans)
IMAGE_SIZE = 16
# Images per score 1..10 (digit 0..9) in each split; train and pool are long-tailed.
TRAIN = (6, 12, 30, 65, 100, 100, 65, 30, 12, 6)
VALIDATION = (15,) * LEVELS
POOL = (10, 15, 25, 40, 33, 33, 40, 25, 15, 10)
TEST = (30,) * LEVELS
SPLITS = {"train": TRAIN, "val": VALIDATION, "pool": POOL, "test": TEST}
# ELTA, its parts, its APDS round and that round's control, then every registered peer (elta_core.peer_names).
METHODS = ",".join(("baseline", "tfa", "flsa", "elta", "elta+apds", "elta+round2-control", *PEER_NAMES))


def vote_counts(digit: int, rng: np.random.Generator) -> np.ndarray:
    """``VOTERS`` votes over the scores 1..10 around digit + 1 (a rounded normal with a
    per-image spread), as raters' votes scatter around an image's quality."""
    spread = rng.uniform(0.6, 1.4)
    votes = np.clip(np.rint(rng.normal(digit + 1, spread, VOTERS)), 1, LEVELS).astype(int)
    return np.bincount(votes - 1, minlength=LEVELS)


def write_dataset(out: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """The images under ``out/images`` and one AVA-format CSV per split; returns their paths."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_digit = {d: rng.permutation(np.flatnonzero(digits.target == d)) for d in range(LEVELS)}
    header = "image_id," + ",".join(f"score{k}" for k in range(2, 12)) + ",tag1,tag2,tag3"
    taken = dict.fromkeys(range(LEVELS), 0)
    paths = {}
    for split, sizes in SPLITS.items():
        rows = []
        for digit, size in enumerate(sizes):
            chosen = by_digit[digit][taken[digit]:taken[digit] + size]
            if len(chosen) < size:
                raise ValueError(f"digit {digit}: {size} images wanted in {split}, {len(chosen)} left")
            taken[digit] += size
            for index in chosen:
                pixels = (digits.images[index] / 16.0 * 255).astype(np.uint8)
                image = Image.fromarray(pixels).resize((SIDE, SIDE), Image.BICUBIC)
                image.save(out / "images" / f"{index}.jpg", quality=95)
                rows.append(f"{index}," + ",".join(map(str, vote_counts(digit, rng))) + ",0,0,0")
        # test.csv, written last and atomically, marks a complete data set (see main)
        paths[split] = atomic_write_text(out / f"{split}.csv", "\n".join([header, *rows]) + "\n")
    return paths


def train_arguments(data: Path, epochs: int, apds_pool: Path) -> list[str]:
    """``elta train``'s arguments shared by every run. The validation split is APDS's
    calibration set (``--calibration``), not ``--val-labels``: nothing selects an epoch,
    and validating every epoch would cost 6 % of the time; :func:`validation_table`
    evaluates each run's final checkpoint on it instead. A checkpoint every 10 epochs:
    writing resnet18's (134 MB with AdamW's state) took 0.4 s of a 1.9 s epoch."""
    return ["--labels", str(data / "train.csv"), "--format", "ava", "--images", str(data / "images"),
            "--calibration", str(data / "val.csv"), "--test-labels", str(data / "test.csv"),
            "--unlabelled", str(apds_pool), "--backbone", "resnet18", "--image-size", str(IMAGE_SIZE),
            "--epochs", str(epochs), "--batch-size", "32", "--workers", "0", "--checkpoint-every", "10"]


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


VALIDATION_KEYS = (("plcc", "P"), ("mae_low", "L"), ("mae_high", "H"), ("mae", "MAE"))


def validate_run(data: Path, run: Path) -> dict:
    """The final checkpoint of the run in ``run`` on ``data/val.csv``: ``elta evaluate``'s
    metrics, without its per-image files, in one process (no loader workers) and one torch
    thread; kept in ``run/validation`` and computed again only for another checkpoint."""
    import json

    from elta_core.app import evaluate
    from elta_core.app.config import EvaluateConfig
    from elta_core.app.run import json_ready
    from elta_core.io import atomic_write_json
    from elta_core.run_state import sha256_of_file

    target, checkpoint = run / "validation", run / "checkpoint.pt"
    source = {"checkpoint_sha256": sha256_of_file(checkpoint)}  # a run resumed for more epochs is evaluated anew
    if not (target / "evaluation.json").exists() or _read_json(target / "source.json") != source:
        metrics = evaluate.evaluate(EvaluateConfig(checkpoint=str(checkpoint), labels=str(data / "val.csv"),
                                                   format="ava", images=str(data / "images"), quiet=True,
                                                   workers=0, threads=1))
        atomic_write_json(target / "evaluation.json", json_ready(metrics))
        atomic_write_json(target / "source.json", source)
    return json.loads((target / "evaluation.json").read_text())


def mean_std_cells(rows: list[dict]) -> list[str]:
    """:data:`VALIDATION_KEYS` of ``rows`` (one per seed) as mean ± sample std."""
    return [f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows], ddof=1):.3f}"
            for k, _ in VALIDATION_KEYS]


def validation_table(comparison: Path, methods: list[str], seeds: list[int]) -> str:
    """Each run of the comparison in ``comparison`` (``DIR/compare``, ``DIR/tuned``), its
    final checkpoint on ``DIR/data/val.csv``, mean +- sample std over the seeds: the
    numbers settings are chosen on (the test split is only reported)."""
    from elta_core.app.compare import run_folder

    lines = ["| method (validation split) | " + " | ".join(short for _, short in VALIDATION_KEYS) + " |",
             "|---|" + "---:|" * len(VALIDATION_KEYS)]
    for method in methods:
        rows = [validate_run(comparison.parent / "data", run_folder(comparison, method, seed)) for seed in seeds]
        lines.append(f"| {method} | " + " | ".join(mean_std_cells(rows)) + " |")
    return "\n".join(lines)


def train_and_validate(arguments: list[str], method: str, seed: int, out: str, methods: list[str],
                       point: dict | None = None) -> dict:
    """One pool process's task: the (method, seed) run of the comparison in ``out`` (at
    ``point``, a setting chosen by tuning, where there is one), and its validation-split
    evaluation; returns its test metrics."""
    from elta_core.app.config import train_settings
    from elta_core.app.compare import run_folder, train_run

    metrics = train_run(train_settings(arguments).replace(threads=1), method, seed, out, methods, point=point)
    validate_run(Path(out).parent / "data", run_folder(out, method, seed))
    return metrics


def train_trial(arguments: list[str], method: str, point: dict, seed: int, out: str) -> dict:
    """One pool process's task: a tuning trial (:func:`elta_core.app.tuning.train_trial`),
    validated on ``val.csv`` (``--val-labels``)."""
    from elta_core.app import tuning
    from elta_core.app.config import train_settings

    return tuning.train_trial(train_settings(arguments).replace(threads=1), method, point, seed, out)


# glibc settings for the pool's processes: keep freed memory in the heap (no mmap, no trim)
# instead of returning the step's large buffers to the system and faulting them in again.
# An epoch took about a sixth less (1.85 s to 1.55 s in the pool), to the same bits
# (benchmarks/README.md).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """``variables`` set in ``os.environ`` (for processes started meanwhile), then restored."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_in_pool(jobs: dict, after: dict, parallel: int, name: str) -> dict:
    """Every job of ``jobs`` (key -> (function, arguments)) in a pool of ``parallel``
    processes, in the order given, a job whose key ``after`` maps to another key once that
    one is done; the results by key."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from elta_core.app.compare import RemainingTime

    waiting, done = list(jobs), {}
    clock = RemainingTime(len(waiting))
    with _environment(WORKER_MALLOC), ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
        running: dict = {}
        while waiting or running:
            ready = [key for key in waiting if after.get(key) is None or after[key] in done]
            if not ready and not running:
                raise RuntimeError(f"jobs {waiting} wait for jobs that are not scheduled")
            for key in ready[:parallel - len(running)]:
                waiting.remove(key)
                function, arguments = jobs[key]
                running[pool.submit(function, *arguments)] = key
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                try:
                    done[key] = future.result()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
                clock.done()
                print(f"{name}: {', '.join(map(str, key))} done{clock.line()}", flush=True)
    return done


def run_all(arguments: list[str], out: Path, methods: list[str], seeds: list[int], parallel: int,
            chosen: dict | None = None) -> dict:
    """Every (method, seed) run of the comparison in ``out`` in a pool of ``parallel``
    processes: the runs that train round 1 first (``elta`` first in each seed), then each
    APDS run, short, once its round-1 donor is done; each method at its ``chosen`` point
    where there is one. The metrics per method in seed order."""
    from elta_core.app.methods import round1_donor

    donors = {m: round1_donor(m, methods) for m in methods}
    order = lambda run: (donors[run[0]] is not None, run[1], run[0] not in donors.values())  # noqa: E731
    runs = sorted(((m, s) for s in seeds for m in methods), key=order)
    jobs = {(m, s): (train_and_validate, (arguments, m, s, str(out), methods, (chosen or {}).get(m))) for m, s in runs}
    after = {(m, s): (donors[m], s) if donors[m] else None for m, s in runs}
    done = run_in_pool(jobs, after, parallel, "real_images")
    return {m: [done[m, s] for s in seeds] for m in methods}


def tune_all(arguments: list[str], out: Path, methods: list[str], budget: int, seeds: list[int], criterion: str,
             parallel: int) -> dict:
    """``elta compare --tune``'s trials in a pool of ``parallel`` processes, scored on
    ``val.csv``; then its report (:func:`elta_core.app.tuning.tune`, which reads the
    finished trials back)."""
    from elta_core.app import tuning
    from elta_core.app.config import train_settings

    base = train_settings(arguments).replace(threads=1)
    jobs = {(m, tuning.point_label(p), s): (train_trial, (arguments, m, p, s, str(out)))
            for m, p, s in tuning.trial_plan(base, methods, budget, seeds)}
    run_in_pool(jobs, {}, parallel, "real_images tuning")
    return tuning.tune(base, methods, budget, seeds, criterion, out, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="elta_real_images")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60, help="the measured table's length (docs/design.md)")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--parallel", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                        help="also the comparison with every method tuned (elta compare --tune) under DIR/tuned, "
                             "the untuned one kept in DIR/compare")
    parser.add_argument("--tune-seeds", type=int, default=2)
    parser.add_argument("--tune-criterion", default="mae")
    parser.add_argument("--write-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="more elta train arguments, after --")
    args = parser.parse_args(argv)
    from elta_core.app import tuning
    from elta_core.app.compare import check_train_arguments
    from elta_core.app.methods import parse_methods
    from elta_core.comparison import SELECTION_CRITERIA

    check_train_arguments(args.extra)  # a method's own setting (--flsa, --num-pairs ...) would be overridden
    for name, least in (("seeds", 2), ("epochs", 1), ("parallel", 1), ("tune", 0), ("tune_seeds", 1)):  # refused now
        if getattr(args, name) < least:
            raise ValueError(f"{name}: expected at least {least}, got {getattr(args, name)}")
    out = Path(args.out)
    data = out / "data"
    if not (data / "test.csv").exists():
        write_dataset(data)
    if args.write_only:
        return 0

    arguments = train_arguments(data, args.epochs, data / "pool.csv") + [a for a in args.extra if a != "--"]
    methods, seeds = parse_methods(args.methods), list(range(args.seeds))
    if args.tune:
        tuning.tuning_seeds(args.tune_seeds, seeds)  # refused now: a tuning seed among the reported ones
        if args.tune_criterion not in SELECTION_CRITERIA:
            raise ValueError(f"tune_criterion: expected one of {', '.join(SELECTION_CRITERIA)}, got "
                             f"{args.tune_criterion!r}")
    tables = [_comparison(arguments, out / "compare", methods, seeds, args.parallel)]
    if args.tune:
        # the trials validate on val.csv every epoch (--val-labels); the reported runs do not need to
        trials = arguments + ["--val-labels", str(data / "val.csv")]
        report = tune_all(trials, out / "tuned", methods, args.tune, tuning.tuning_seeds(args.tune_seeds, seeds),
                          args.tune_criterion, args.parallel)
        tables.append(_comparison(arguments, out / "tuned", methods, seeds, args.parallel, report))
    print("\n\n".join(tables))
    return 0


def _comparison(arguments: list[str], out: Path, methods: list[str], seeds: list[int], parallel: int,
                tuning_report: dict | None = None) -> str:
    """The comparison in ``out`` (its runs trained in the pool, at the tuned settings of
    ``tuning_report`` where given) and its tables, ``validation.md`` included."""
    from elta_core.app.config import train_settings
    from elta_core.app.compare import chosen_points, compare

    chosen = chosen_points(tuning_report, methods) if tuning_report else None
    results = run_all(arguments, out, methods, seeds, parallel, chosen)
    base = train_settings(arguments).replace(threads=1)
    report = compare(base, methods, seeds, out, progress=False, train_arguments=arguments, results=results,
                     tuning=tuning_report)
    validation = validation_table(out, methods, seeds)
    atomic_write_text(out / "validation.md", validation + "\n")
    return report["markdown"] + "\n\n" + validation


if __name__ == "__main__":
    sys.exit(main())
