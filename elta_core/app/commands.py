"""What each ``elta`` command does, given its settings (:mod:`elta_core.app.config`):
the functions :data:`elta_core.app.cli.COMMANDS` runs. Frameworks are imported by the
command that needs them, so ``elta stats`` runs with NumPy alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from elta_core.app import config
from elta_core.app.methods import DEFAULT_METHODS, parse_methods


def run_synth(settings: config.SynthConfig) -> int:
    from elta_core.data.synthetic import SPLIT_FILES, export, generate

    path = export(generate(settings.count, settings.image_size, seed=settings.seed), settings.out,
                  splits=settings.split, seed=settings.seed)
    print(f"{settings.count} images in {Path(settings.out) / 'images'}, labels in {path} (--format ava)")
    if settings.split:
        print(f"splits in {', '.join(str(Path(settings.out) / name) for name in SPLIT_FILES)}")
    return 0


def run_stats(settings: config.StatsConfig) -> int:
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


def run_demo(settings: config.DemoCommand) -> int:
    from elta_core.optional import require

    for module, extra in (("torch", "torch"), ("tqdm", "torch"), ("matplotlib", "plot")):
        require(module, extra)
    from elta_core.app.demo import FULL, QUICK, describe, run_demo

    report = run_demo(QUICK if settings.quick else FULL, settings.out, progress=not settings.quiet,
                      threads=settings.threads)
    print(describe(report))
    return 0


def run_doctor(settings: config.DoctorConfig) -> int:
    from elta_core.optional import require

    require("torch", "torch")
    import torch

    from elta_core.app import doctor
    from elta_core.app.run.resources import device_named

    devices = [device_named(settings.device)] if settings.device else \
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


def is_main() -> bool:
    from elta_core.adapters.torch.distributed import is_main

    return is_main()


def leave_process_group() -> None:
    """Under torchrun: leave the process group the command joined (if it did)."""
    if "torch.distributed" in sys.modules:
        from elta_core.adapters.torch.distributed import shutdown

        shutdown()


def needs_vision() -> None:
    from elta_core.optional import require

    for module in ("torch", "torchvision", "PIL", "tqdm"):
        require(module, "vision")


def run_train(settings: config.TrainConfig) -> int:
    needs_vision()
    from elta_core.app.run import format_metrics, train

    result = train(settings)
    if result and is_main():
        print(format_metrics(result))
        out = Path(settings.out)
        best = f", best epoch {result['best_epoch']}" if "best_epoch" in result else ""
        print(f"test metrics of {out / result['checkpoint']}{best} in {out / 'metrics.json'}; per-image predictions "
              f"in predictions.csv and predictions.png; per-epoch metrics in metrics.csv")
    return 0


def run_evaluate(settings: config.EvaluateConfig) -> int:
    needs_vision()
    from elta_core.app.evaluate import evaluate
    from elta_core.app.run import format_metrics

    result = evaluate(settings)
    if is_main():
        print(format_metrics(result))
    return 0


def run_compare(settings: config.CompareConfig) -> int:
    needs_vision()
    from elta_core.app.compare import check_train_arguments, compare

    methods = parse_methods(",".join(DEFAULT_METHODS) if settings.methods is None else settings.methods)
    arguments = [a for a in settings.train_arguments if a != "--"]
    check_train_arguments(arguments)
    if not arguments:  # the built-in dataset, written once under --out
        arguments = _builtin_compare_data(Path(settings.out) / "data", settings.quick, fixed_test=bool(settings.tune))
    seeds = list(range(settings.seeds if settings.seeds is not None else (2 if settings.quick else 3)))
    base = config.train_settings(arguments)
    if settings.threads is not None:
        base = base.replace(threads=settings.threads)
    tuning = None
    if settings.tune:
        from elta_core.app.tuning import tune, tuning_seeds

        tuning = tune(base, methods, settings.tune, tuning_seeds(settings.tune_seeds, seeds), settings.tune_criterion,
                      settings.out, progress=not settings.quiet)
    report = compare(base, methods, seeds, settings.out, progress=not settings.quiet, train_arguments=arguments,
                     tuning=tuning)
    print(report["markdown"])
    if settings.quick:
        print("--quick is a smoke test (160 images, 2 epochs, 2 seeds): it shows that every method runs, not which "
              "is better; run without --quick, with 5 or more seeds, for a comparison.")
    print("written: " + ", ".join(report["paths"].values()))
    return 0


def _builtin_compare_data(data: Path, quick: bool, fixed_test: bool) -> list[str]:
    """``elta compare``'s arguments for the built-in dataset, written to ``data`` once. With
    ``fixed_test`` (``--tune``): train, validation and test files, so that every seed tests
    on the same images and the tuning never reads them; else one file, each seed holding
    out its own test images."""
    from elta_core.data.synthetic import export, generate

    count, size, epochs = (160, 32, 2) if quick else (600, 32, 4)
    if not (data / ("test.csv" if fixed_test else "labels.csv")).exists():
        export(generate(count, size, seed=2024), data, splits=(0.6, 0.15, 0.25) if fixed_test else None)
    files = ["--labels", str(data / "train.csv"), "--val-labels", str(data / "val.csv"), "--test-labels",
             str(data / "test.csv")] if fixed_test else ["--labels", str(data / "labels.csv")]
    return [*files, "--format", "ava", "--images", str(data / "images"), "--backbone", "resnet18", "--image-size",
            str(size), "--epochs", str(epochs), "--batch-size", "32", "--val-fraction", "0.25"]


def run_prepare(settings: config.PrepareConfig) -> int:
    needs_vision()
    from elta_core.app.prepare import prepare
    from elta_core.app.run.resources import default_workers
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


def run_predict(settings: config.PredictConfig) -> int:
    needs_vision()
    from elta_core.app.predict import predict
    from elta_core.io import atomic_write_text

    result = predict(settings)
    print(f"{result['scored']} image(s) scored -> {result['path']}")
    if result["skipped"]:
        listed = Path(result["path"]).with_suffix(".skipped.txt")
        atomic_write_text(listed, "\n".join(result["skipped"]) + "\n")
        print(f"{len(result['skipped'])} unreadable image(s) skipped (--skip-unreadable), e.g. {result['skipped'][0]}; "
              f"all listed in {listed}")
    return 0


def run_export(settings: config.ExportConfig) -> int:
    needs_vision()
    from elta_core.optional import require

    require("safetensors", "timm")
    from elta_core.app.export import export

    paths = export(settings)
    print(f"exported to {settings.out}: " + ", ".join(Path(path).name for path in paths.values()))
    print(f"load it without elta_core: import sys; sys.path.insert(0, {settings.out!r}); "
          "from load_elta_model import load; model, transform, spec = load(" + repr(settings.out) + ")")
    return 0


def run_pseudo_label(settings: config.PseudoLabelConfig) -> int:
    needs_vision()
    from elta_core.app.pseudo_label import pseudo_label

    result = pseudo_label(settings)
    if not is_main():
        return 0
    print(result["grid"].to_markdown())
    print(f"beta* {result['grid'].beta:g}, t* {result['grid'].threshold:g}: "
          f"{result['num_selected']} of {result['pool']} pool images pseudo-labelled -> {result['path']}")
    return 0
