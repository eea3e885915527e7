"""The real-image benchmark's data (benchmarks/real_images.py): the bundled handwritten
digits as AVA-format vote counts, in seeded, disjoint, long-tailed splits."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from benchmarks import real_images, round2_probe  # noqa: E402
from elta_core.data import load_labels  # noqa: E402


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return folder, real_images.write_dataset(folder, seed=0)


def test_splits_are_disjoint_long_tailed_and_in_the_ava_format(written):
    folder, paths = written
    tables = {split: load_labels(path, "ava", image_root=folder / "images") for split, path in paths.items()}
    ids = {split: set(table.images) for split, table in tables.items()}
    for a in ids:
        for b in ids:
            assert a == b or not ids[a] & ids[b], f"{a} and {b} share images"
    for split, sizes in real_images.SPLITS.items():
        table = tables[split]
        assert len(table) == sum(sizes)
        # each image's votes centre on its digit + 1: the rounded mean score recovers the level counts
        levels = np.bincount(np.clip(np.rint(table.scores), 1, 10).astype(int) - 1, minlength=10)
        assert abs(levels - np.asarray(sizes)).sum() <= 0.2 * sum(sizes)
    train = np.asarray(real_images.TRAIN)
    assert train.min() == 6 and train.max() / train.min() > 15, "long-tailed: the rarest scores have 6 images"
    assert len(set(real_images.TEST)) == 1, "tail-heavy test split: every score equally often"


def test_the_data_is_seeded(written, tmp_path):
    folder, paths = written
    again = real_images.write_dataset(tmp_path, seed=0)
    for split in paths:
        assert again[split].read_text() == paths[split].read_text()
    other = real_images.write_dataset(tmp_path / "other", seed=1)
    assert other["train"].read_text() != paths["train"].read_text()


@pytest.mark.parametrize("argv,message", [(["--seeds", "1"], "seeds: expected at least 2, got 1"),
                                          (["--parallel", "0"], "parallel: expected at least 1, got 0")])
def test_bad_benchmark_arguments_are_refused_before_any_training(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        real_images.main(["--out", str(tmp_path), *argv])
    assert not (tmp_path / "data").exists()


def test_a_setting_that_the_methods_set_is_refused_not_silently_overridden(tmp_path):
    with pytest.raises(ValueError, match="--flsa are set by elta compare per method"):
        real_images.main(["--out", str(tmp_path), "--", "--flsa", "10"])
    assert not (tmp_path / "data").exists()


def test_the_validation_table_evaluates_a_changed_checkpoint_again(tmp_path, monkeypatch):
    """A run resumed for more epochs has a new checkpoint: its cached validation metrics
    described the old one (they were reused before, keyed by the file's existence alone)."""
    pytest.importorskip("torch")
    from elta_core.app import evaluate as evaluate_command

    calls = []

    def evaluate(settings):
        calls.append(settings.checkpoint)
        return {key: float(len(calls)) for key in ("plcc", "mae_low", "mae_high", "mae")}

    monkeypatch.setattr(evaluate_command, "evaluate", evaluate)
    for seed in (0, 1):
        run = tmp_path / "compare" / "runs" / "elta" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "checkpoint.pt").write_bytes(b"epoch 20")
    real_images.validation_table(tmp_path / "compare", ["elta"], [0, 1])
    real_images.validation_table(tmp_path / "compare", ["elta"], [0, 1])
    assert len(calls) == 2, "an unchanged checkpoint is not evaluated twice"
    (tmp_path / "compare" / "runs" / "elta" / "seed1" / "checkpoint.pt").write_bytes(b"epoch 40")
    table = real_images.validation_table(tmp_path / "compare", ["elta"], [0, 1])
    assert len(calls) == 3 and calls[-1].endswith("seed1/checkpoint.pt")
    assert "| elta | 2.000 ± 1.414 |" in table, "seed 1's new metrics (3), not its old ones (2)"


@pytest.mark.slow
def test_the_benchmark_trains_each_round_1_once_and_resumes_run_by_run(tmp_path):
    """The pool trains each seed's elta round 1 once: the APDS runs take it (their round-1
    rows are elta's, wall times included); run again, every run is read back; the round-2
    probe trains only round 2, from the benchmark's elta runs."""
    import json
    import os

    pytest.importorskip("torchvision")
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--seeds", "2", "--epochs", "1", "--methods", "baseline,elta,elta+apds", "--",
            "--round2-epochs", "1"]
    before = dict(os.environ)
    assert real_images.main(argv) == 0
    assert dict(os.environ) == before, "the pool's allocator settings are its processes' alone"
    runs = out / "compare" / "runs"
    for seed in (0, 1):
        elta = (runs / "elta" / f"seed{seed}" / "metrics.csv").read_text().splitlines()[1:]
        apds = (runs / "elta+apds" / f"seed{seed}" / "metrics.csv").read_text().splitlines()[1:]
        assert apds[:1] == [line + ",1" for line in elta] and len(apds) == 2
        assert (runs / "elta+apds" / f"seed{seed}" / "validation" / "evaluation.json").is_file()
    report = json.loads((out / "compare" / "compare.json").read_text())
    assert report["methods"] == ["baseline", "elta", "elta+apds"]
    assert (out / "compare" / "validation.md").read_text().startswith("| method (validation split) |")

    trained = {path: path.stat().st_mtime_ns for path in runs.glob("baseline/seed*/checkpoint.pt")}
    assert real_images.main(argv) == 0
    assert {path: path.stat().st_mtime_ns for path in trained} == trained
    assert json.loads((out / "compare" / "compare.json").read_text())["means"] == report["means"]

    probe = tmp_path / "probe"
    assert round2_probe.main(["--benchmark", str(out), "--out", str(probe), "--variants", "separate:1,concat:2",
                              "--seeds", "2", "--epochs", "1"]) == 0
    table = (probe / "round2.md").read_text()
    assert "| separate, 1 epoch | elta+apds |" in table and "| concat, 2 epochs | elta+round2-control |" in table
    assert (probe / "concat1" / "elta+round2-control" / "seed1").is_dir(), "the control runs once, as concat"
    assert not (probe / "separate1" / "elta+round2-control").exists()
    rows = (probe / "separate1" / "elta+apds" / "seed0" / "metrics.csv").read_text().splitlines()[1:]
    elta = (runs / "elta" / "seed0" / "metrics.csv").read_text().splitlines()[1:]
    # (separate's round-2 rows add a column, which round 1's leave empty)
    assert rows[0].startswith(elta[0] + ",1"), "round 1 is the benchmark's, not trained again"


@pytest.mark.slow
def test_the_tuned_benchmark_tunes_on_val_csv_and_keeps_the_untuned_table_beside_it(tmp_path):
    import json

    pytest.importorskip("torchvision")
    out = tmp_path / "bench"
    assert real_images.main(["--out", str(out), "--seeds", "2", "--epochs", "1", "--methods", "baseline,ranksim",
                             "--tune", "2", "--tune-seeds", "1"]) == 0
    assert (out / "compare" / "compare.md").is_file() and not (out / "compare" / "tuning.json").exists()
    report = json.loads((out / "tuned" / "tuning.json").read_text())
    chosen = report["methods"]["ranksim"]["chosen"]["ranksim.weight"]
    trial = out / "tuned" / "tuning" / "ranksim" / "ranksim.weight=1" / "seed1000"
    config = json.loads((trial / "manifest.json").read_text())["config"]
    assert config["val_labels"].endswith("val.csv") and config["evaluate_on"] == "validation"
    for seed in (0, 1):
        run = json.loads((out / "tuned" / "runs" / "ranksim" / f"seed{seed}" / "manifest.json").read_text())
        assert run["config"]["peer_settings"] == [f"ranksim.weight={chosen!r}"]
        assert run["config"]["val_labels"] is None, "the reported runs do not validate every epoch"
    assert "setting chosen by --tune" in (out / "tuned" / "compare.md").read_text()
    assert (out / "tuned" / "validation.md").read_text().startswith("| method (validation split) |")


@pytest.mark.parametrize("text,message", [
    ("concat", "expected MODE:EPOCHS items"), ("sideways:3", "expected MODE:EPOCHS items"),
    ("concat:0", "EPOCHS >= 1"), (",", "at least one MODE:EPOCHS item"),
])
def test_round2_probe_variants_are_checked(text, message):
    with pytest.raises(ValueError, match=message):
        round2_probe.parse_variants(text)
