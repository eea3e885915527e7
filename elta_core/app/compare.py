"""``elta compare``: the same model trained with each method on the same data, splits and
seeds, through ``elta train``; P, S, accuracy, MSE and L/M/H as mean +- std, and each
method's paired difference to the baseline with its 95 % Student-t interval
(:mod:`elta_core.comparison`).

Every (method, seed) is an ``elta train`` run directory of its own under ``OUT/runs``,
trained in this process from a :class:`~elta_core.app.config.TrainConfig` per run,
started or continued with ``--resume``: a killed comparison resumes run by run, and a
run whose settings changed is refused by name, never reused.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from elta_core.app.methods import METHODS, SET_PER_RUN, point_label, round1_donor, tuned_as
from elta_core.comparison import SELECTION_CRITERIA, paired_difference
from elta_core.io import atomic_write_json, atomic_write_text

MIN_SEEDS_FOR_INTERVALS = 3
REPORTED = [("plcc", "P", "↑"), ("srcc", "S", "↑"), ("accuracy", "acc", "↑"), ("mse", "MSE", "↓"),
            ("mae_low", "L", "↓"), ("mae_medium", "M", "↓"), ("mae_high", "H", "↓")]


class RemainingTime:
    """One progress line over many runs: how many are done, in how long, and about how long
    the rest will take at that pace (instead of a bar per epoch of every run)."""

    def __init__(self, total: int):
        self.total, self.finished, self.started = total, 0, time.perf_counter()

    def done(self) -> None:
        self.finished += 1

    def line(self) -> str:
        if not self.finished:
            return ""
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.finished * (self.total - self.finished)
        return f" ({self.finished} done in {_duration(elapsed)}; about {_duration(left)} left)"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def check_train_arguments(train_arguments: Sequence[str]) -> None:
    """Refuse shared ``elta train`` arguments that compare sets per method and run."""
    import argparse

    from elta_core.app.config import TrainConfig
    from elta_core.app.options import add_options, flags_of

    # parsed as elta train parses them, so that an abbreviation (--see for --seed) is caught too
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_options(parser, TrainConfig)
    for action in parser._actions:
        action.required = False  # --labels may come from the caller (the built-in dataset, a benchmark)
    unset = object()
    parser.set_defaults(**{name: unset for name in SET_PER_RUN})
    try:
        namespace, _ = parser.parse_known_args([a for a in train_arguments if a != "--"])
    except (argparse.ArgumentError, SystemExit):  # a malformed value: elta train's own parsing names it
        namespace = argparse.Namespace()
    spelled = flags_of(TrainConfig, SET_PER_RUN)
    given = [spelled[name][0] for name in SET_PER_RUN if getattr(namespace, name, unset) is not unset]
    if given:
        raise ValueError(f"train arguments: {', '.join(given)} are set by elta compare per method and seed; "
                         "leave them out")


def compare(base: Any, methods: Sequence[str], seeds: Sequence[int], out: str | Path, progress: bool = True,
            train_arguments: Sequence[str] = (), results: dict[str, list[dict[str, Any]]] | None = None,
            tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every method with every seed: :func:`elta_core.app.run.train` with the
    shared settings ``base`` (a :class:`~elta_core.app.config.TrainConfig`) and the
    method's (:data:`elta_core.app.methods.METHODS`), in this process; then write
    ``compare.md``, ``compare.json`` and ``compare.png`` to ``out``. The first method is
    the reference of the paired differences (``baseline`` when it is there). ``results``:
    the runs' metrics where the caller trained them (:func:`train_run`), per method in
    seed order. ``tuning``: :func:`elta_core.app.tuning.tune`'s report, whose chosen
    setting each method trains at (and which ``compare.md`` shows)."""
    methods = list(methods)
    if len(seeds) < 2:
        raise ValueError(f"seeds: a paired interval needs at least 2 seeds, got {len(seeds)}")
    out = Path(out)
    chosen = chosen_points(tuning, methods) if tuning else {}
    if results is None:
        results = train_runs(base, methods, seeds, out, progress, chosen)
    elif [len(results.get(m, ())) for m in methods] != [len(seeds)] * len(methods):
        raise ValueError(f"results: expected {len(seeds)} runs of each of {', '.join(methods)}")
    report = summarise(results, methods[0])
    report.update(methods=methods, seeds=list(seeds), train_arguments=list(train_arguments))
    if tuning:
        report["tuning"] = {m: point_label(chosen[m]) for m in methods}
        report["markdown"] += "\n\n" + settings_table(tuning, methods)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", {k: v for k, v in report.items() if k != "results"}
                      | {"results": finite_or_null(results)})
    atomic_write_text(out / "compare.md", report["markdown"] + "\n")
    _figure(out / "compare.png", results, methods)
    write_differences(out / "differences.png", report, "elta compare")
    written = ("compare.md", "compare.json", "compare.png", "differences.png") + (("tuning.md",) if tuning else ())
    report["paths"] = {name: str(out / name) for name in written}
    return report


def train_runs(base: Any, methods: Sequence[str], seeds: Sequence[int], out: str | Path,
               progress: bool = True, chosen: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, list[dict[str, Any]]]:
    """The metrics of every (method, seed) run (:func:`train_run`), seeds in order, each
    method at its ``chosen`` point (``elta compare --tune``) where there is one."""
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    runs = [(m, s) for s in seeds for m in methods]
    clock = RemainingTime(len(runs))
    for k, (method, seed) in enumerate(runs, start=1):
        if progress:
            print(f"compare: run {k}/{len(runs)}: {method}, seed {seed} -> {run_folder(out, method, seed)}"
                  f"{clock.line()}", flush=True)
        results[method].append(train_run(base, method, seed, out, methods, point=(chosen or {}).get(method)))
        clock.done()
    return results


def run_folder(out: str | Path, method: str, seed: int) -> Path:
    """The run directory of ``method`` with ``seed`` in the comparison ``out``."""
    return Path(out) / "runs" / method / f"seed{seed}"


def train_run(base: Any, method: str, seed: int, out: str | Path, methods: Sequence[str] = (),
              point: dict[str, Any] | None = None, folder: str | Path | None = None) -> dict[str, Any]:
    """The metrics of the run of ``method`` with ``seed`` in ``folder`` (default
    ``out/runs/METHOD/seedS``), trained or continued there; a finished run is read back,
    not trained again, so several processes can share the runs of one comparison (each
    its own) before :func:`compare` reads them. ``point``: settings of
    :data:`~elta_core.app.methods.SEARCH_SPACES` over the method's own (``--tune``). An
    APDS method takes its round 1 from the finished run of its
    :func:`~elta_core.app.methods.round1_donor` among ``methods`` (``--round1-from``),
    where there is one."""
    from elta_core.app.run import holds_out_calibration, train

    folder = Path(folder) if folder is not None else run_folder(out, method, seed)
    donor = round1_donor(method, methods)
    donor_run = run_folder(out, donor, seed) if donor else None
    settings = base.replace(**METHODS[method], seed=seed, out=str(folder), resume=True, quiet=True)
    settings = settings.replace(**point_settings(settings, point or {}))
    # an APDS run that holds training images out to calibrate on trains on other rows than
    # its donor: it trains its own round 1
    if donor_run and (donor_run / "metrics.json").is_file() and not holds_out_calibration(settings):
        settings = settings.replace(round1_from=str(donor_run))
    try:
        train(settings)
    except (ValueError, OSError, FloatingPointError) as error:
        raise type(error)(f"{method}, seed {seed}: {error} (its run directory is {folder})") from None
    return json.loads((folder / "metrics.json").read_text())


def point_settings(settings: Any, point: dict[str, Any]) -> dict[str, Any]:
    """``point``'s settings as fields of ``settings``: a field by name, ``PEER.SETTING``
    through ``peer_settings`` (over the shared ones); shared settings of peers the run
    does not train are left out."""
    from elta_core.app.options import peer_settings

    fields = {k: v for k, v in point.items() if "." not in k}
    entries = {e.partition("=")[0]: e for e in settings.peer_settings if e.partition(".")[0] in settings.peers}
    for key, value in point.items():
        if "." in key:
            entries[key] = peer_settings(f"{key}={value}")[0]
    return {**fields, "peer_settings": tuple(entries.values())}


def chosen_points(report: dict[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each of ``methods``' chosen point (an APDS method: its round-1 method's)."""
    return {m: report["methods"][tuned_as(m)]["chosen"] for m in methods}


def settings_table(report: dict[str, Any], methods: Sequence[str]) -> str:
    """The setting each of ``methods`` trained at, for ``compare.md``."""
    name, budget = SELECTION_CRITERIA[report["criterion"]][2], report["budget"]
    lines = ["| method | setting chosen by --tune | " + name + " (mean over the tuning seeds) | trials |",
             "|---|---|---:|---:|"]
    for method in methods:
        tuned = report["methods"][tuned_as(method)]
        via = f" (as {tuned_as(method)})" if tuned_as(method) != method else ""
        if not tuned["trials"]:
            lines.append(f"| {method} | nothing to tune{via} | | 0 |")
            continue
        chosen = next(r for r in tuned["trials"] if r["setting"] == tuned["setting"])
        value = "every trial diverged" if undefined(chosen["mean"]) else f"{chosen['mean']:.3f}"
        lines.append(f"| {method} | {chosen['setting'] + via} | {value} | {len(tuned['trials'])} |")
    seeds = ("seed " if len(report["seeds"]) == 1 else "seeds ") + ", ".join(map(str, report["seeds"]))
    return ("\n".join(lines) + f"\n\nEach method: the first {budget} points of its search space (elta compare --help), "
            f"each trained with the tuning {seeds} and scored on the validation split; the test split was not read. "
            "Every trial: tuning.md.")


def finite_or_null(value: Any) -> Any:
    """``value`` (a run's metrics, a report) with every non-finite float, at any depth, as
    null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def undefined(value: float | None) -> bool:
    """Whether a mean or a criterion is undefined: NaN, or null once read back from JSON."""
    return value is None or math.isnan(value)


def _value(run: dict[str, Any], key: str) -> float:
    value = run.get(key)
    return float("nan") if value is None else float(value)


def summarise(results: dict[str, list[dict[str, Any]]], reference: str) -> dict[str, Any]:
    """Mean +- std per method and metric, and each method's paired difference to
    ``reference`` (runs paired by seed, in order)."""
    table = ["| method | " + " | ".join(f"{short} {arrow}" for _, short, arrow in REPORTED) + " |",
             "|---|" + "---:|" * len(REPORTED)]
    means: dict[str, dict[str, float]] = {}
    for method, runs in results.items():
        cells, means[method] = [], {}
        for key, _, _ in REPORTED:
            values = np.array([_value(r, key) for r in runs])
            means[method][key] = float(values.mean()) if np.isfinite(values).all() else None
            spread = values.std(ddof=1) if len(values) > 1 else float("nan")  # the sample std, not the population's
            cells.append(f"{values.mean():.3f} ± {spread:.3f}" if np.isfinite(values).all() else "undefined")
        table.append(f"| {method} | " + " | ".join(cells) + " |")
    differences: dict[str, dict[str, Any]] = {}
    lines = [f"| method - {reference} | " + " | ".join(f"Δ{short}" for _, short, _ in REPORTED) + " |",
             "|---|" + "---:|" * len(REPORTED)]
    for method, runs in results.items():
        if method == reference:
            continue
        cells, differences[method] = [], {}
        for key, _, _ in REPORTED:
            mine, theirs = [_value(r, key) for r in runs], [_value(r, key) for r in results[reference]]
            if not (np.isfinite(mine).all() and np.isfinite(theirs).all()):
                cells.append("undefined")
                differences[method][key] = None
                continue
            difference = paired_difference(mine, theirs)
            differences[method][key] = asdict(difference) | {"excludes_zero": difference.excludes_zero}
            # 2 seeds: 1 degree of freedom, an interval too wide to mean anything, so none is shown
            cells.append(difference.describe() if len(mine) >= MIN_SEEDS_FOR_INTERVALS else f"{difference.mean:+.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = len(results[reference])
    if seeds >= MIN_SEEDS_FOR_INTERVALS:
        paired = (f"mean difference to {reference} [95 % Student-t interval, {seeds - 1} degrees of freedom]; * where "
                  "it excludes 0")
    else:
        paired = (f"mean difference to {reference} over {seeds} seeds, without an interval (fewer than "
                  f"{MIN_SEEDS_FOR_INTERVALS} seeds: use 5 or more for a claim)")
    note = (f"± is the sample standard deviation over the {seeds} seeds. Paired by seed (the same split and "
            f"initialisation for every method): {paired}. MSE, L, M, H are errors: negative is better.")
    markdown = "\n".join(table) + "\n\n" + "\n".join(lines) + "\n\n" + note
    return {"means": means, "differences": differences, "markdown": markdown, "reference": reference,
            "results": results}


def write_differences(path: Path, report: dict[str, Any], title: str) -> None:
    """The paired differences of ``report`` (:func:`summarise`'s) as a picture, one panel
    per metric (:func:`elta_core.app.plotting.paired_differences`)."""
    from elta_core.app.plotting import paired_differences, save_png

    save_png(paired_differences(report["differences"], REPORTED, report["reference"], title), path)


def _figure(path: Path, results: dict[str, list[dict[str, Any]]], methods: list[str]) -> None:
    """One panel per metric: every seed's result as a point per method, the reference
    method's mean as a dashed line."""
    from elta_core.app.plotting import pyplot, save_png

    fig, axes = pyplot().subplots(1, len(REPORTED), figsize=(3.0 * len(REPORTED), 3.6))
    seeds = len(results[methods[0]])
    for axis, (key, short, arrow) in zip(axes, REPORTED):
        for k in range(seeds):  # each seed's line across the methods: the pairing the intervals use
            values = [_value(results[method][k], key) for method in methods]
            axis.plot(range(len(methods)), values, marker="o", markersize=4, linewidth=0.8, alpha=0.8,
                      label=f"seed {k}")
        reference = np.nanmean([_value(r, key) for r in results[methods[0]]])
        axis.axhline(reference, color="black", linestyle="--", linewidth=0.8)
        axis.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        axis.set_title(f"{short} {arrow}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"elta compare: each seed a line across the methods; dashed: {methods[0]}'s mean")
    fig.tight_layout()
    save_png(fig, path)
