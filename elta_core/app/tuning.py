"""``elta compare --tune``: every method's main settings chosen under one budget of trials
on the validation split, before the reported seeds train at the chosen setting.

A method's trials are the first ``budget`` points of its search space
(:data:`elta_core.app.methods.SEARCH_SPACES`, its default first), each trained with the
tuning seeds (:func:`tuning_seeds`, apart from the reported seeds) as an ``elta train``
run with ``--evaluate-on validation``: its final model is scored on the validation split,
and the test split is never read, neither its images nor its labels file. The point with
the best mean criterion (:data:`~elta_core.comparison.SELECTION_CRITERIA`) over the
tuning seeds is chosen; a tie keeps the earlier point. An APDS method takes the choice of
the method that trains its round 1 (:func:`~elta_core.app.methods.tuned_as`), so round 1
is still shared.

Every trial is a resumable run directory under ``OUT/tuning/METHOD/SETTING/seedS``, named
by its setting: a killed tuning resumes trial by trial, another budget reuses the trials
it shares, and another criterion chooses again from the same runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from elta_core.app import compare
from elta_core.app.compare import RemainingTime, finite_or_null, undefined
from elta_core.app.methods import point_label, search_points, tuned_as
from elta_core.comparison import SELECTION_CRITERIA, selection_value
from elta_core.io import atomic_write_json, atomic_write_text

FIRST_TUNING_SEED = 1000  # tuning seeds 1000, 1001, ...: the reported seeds are 0..N-1, N <= 1000


def tuning_seeds(count: int, reported: Sequence[int]) -> list[int]:
    """``count`` seeds for the trials, none of them a reported seed."""
    seeds = list(range(FIRST_TUNING_SEED, FIRST_TUNING_SEED + count))
    shared = sorted(set(seeds) & set(reported))
    if shared:
        raise ValueError(f"seeds: the reported seeds reach the tuning seeds ({shared[0]}); use fewer than "
                         f"{FIRST_TUNING_SEED} seeds")
    return seeds


def check_fixed_test_split(base: Any, table: Any) -> None:
    """Refuse to tune on data whose test split is a per-seed random hold-out (``table``:
    ``base``'s label file): the tuning seeds would hold out other images, and choose on
    images that a reported seed tests on."""
    from elta_core.app.run.splits import own_test_split

    if not base.test_labels and own_test_split(table) is None:
        raise ValueError(f"tune: {table.source} has no test split, so each seed holds out test images of its own "
                         "and the tuning seeds would choose settings on images that a reported seed tests on; give "
                         "--test-labels, or a label file with a split column")


def trial_folder(out: str | Path, method: str, point: dict[str, Any], seed: int) -> Path:
    return Path(out) / "tuning" / method / point_label(point) / f"seed{seed}"


def trial_plan(base: Any, methods: Sequence[str], budget: int, seeds: Sequence[int]) -> list[tuple[str, dict, int]]:
    """The trials of tuning ``methods`` (each as the method it is tuned as): (method,
    point, seed), method by method; the data is checked first (a fixed test split)."""
    from elta_core.app.run.model import score_scale_of
    from elta_core.data.labels import load_labels

    table = load_labels(base.labels, base.format, image_root=base.images, **base.csv_options())
    check_fixed_test_split(base, table)
    scale = score_scale_of(table)  # the search spaces' values on 1..10 are scaled by it
    tuned = list(dict.fromkeys(tuned_as(m) for m in methods))
    return [(m, p, s) for m in tuned for p in search_points(m, budget, scale) for s in seeds]


def train_trial(base: Any, method: str, point: dict[str, Any], seed: int, out: str | Path) -> dict[str, Any]:
    """The validation metrics of one trial, trained or read back from its run directory
    (:func:`trial_folder`); a trial that diverges gives ``{"diverged": reason}``: a
    result of the tuning, not its end."""
    try:
        return compare.train_run(base.replace(evaluate_on="validation"), method, seed, out, point=point,
                                 folder=trial_folder(out, method, point, seed))
    except FloatingPointError as error:
        return {"diverged": str(error)}


def tune(base: Any, methods: Sequence[str], budget: int, seeds: Sequence[int], criterion: str, out: str | Path,
         progress: bool = True) -> dict[str, Any]:
    """The tuning of ``methods`` (each to the method it is tuned as): the trials, their
    criterion per seed and mean, and the chosen point per method; written to
    ``out/tuning.json`` and ``out/tuning.md``. ``seeds``: the tuning seeds."""
    if criterion not in SELECTION_CRITERIA:
        raise ValueError(f"tune_criterion: expected one of {', '.join(SELECTION_CRITERIA)}, got {criterion!r}")
    if budget < 1:
        raise ValueError(f"tune: expected a budget of at least 1 trial, got {budget}")
    plan = trial_plan(base, methods, budget, seeds)
    clock, done = RemainingTime(len(plan)), {}
    for k, (method, point, seed) in enumerate(plan, start=1):
        if progress:
            print(f"tune: trial {k}/{len(plan)}: {method}, {point_label(point)}, seed {seed} -> "
                  f"{trial_folder(out, method, point, seed)}{clock.line()}", flush=True)
        done[method, point_label(point), seed] = train_trial(base, method, point, seed, out)
        clock.done()
    points: dict[str, list[dict[str, Any]]] = {tuned_as(m): [] for m in methods}  # none: nothing to tune
    for method, point, _ in plan:
        if point not in points[method]:
            points[method].append(point)
    report = {"criterion": criterion, "budget": budget, "seeds": list(seeds), "methods": {}}
    larger_is_better = SELECTION_CRITERIA[criterion][1]
    for method in points:
        rows = []
        for point in points[method]:
            values = [selection_value(done.get((method, point_label(point), s), {}), criterion) for s in seeds]
            mean = sum(values) / len(values) if values and not any(math.isnan(v) for v in values) else math.nan
            rows.append({"setting": point_label(point), "point": point, "values": values, "mean": mean})
        defined = [r for r in rows if not math.isnan(r["mean"])]
        # every trial diverged: the default (the first point) stays, and the table says so
        best = (max if larger_is_better else min)(defined, key=lambda r: r["mean"]) if defined else \
            (rows[0] if rows else {"point": {}, "setting": ""})
        report["methods"][method] = {"trials": rows, "chosen": best["point"], "setting": best["setting"]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "tuning.json", finite_or_null(report))
    atomic_write_text(out / "tuning.md", tuning_markdown(report) + "\n")
    return report


def tuning_markdown(report: dict[str, Any]) -> str:
    """Every trial's criterion per tuning seed and mean, the chosen setting marked."""
    name = SELECTION_CRITERIA[report["criterion"]][2]
    seeds = report["seeds"]
    lines = [f"| method | setting | {name}: " + ", ".join(f"seed {s}" for s in seeds) + " | mean | |",
             "|---|---|---:|---:|---|"]
    for method, tuned in report["methods"].items():
        for row in tuned["trials"]:
            values = ", ".join("diverged" if undefined(v) else f"{v:.3f}" for v in row["values"])
            mean = "undefined" if undefined(row["mean"]) else f"{row['mean']:.3f}"
            mark = "chosen" if row["setting"] == tuned["setting"] else ""
            lines.append(f"| {method} | {row['setting']} | {values} | {mean} | {mark} |")
    return "\n".join(lines)
