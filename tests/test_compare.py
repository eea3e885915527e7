"""``elta compare``: every (method, seed) an elta train run, paired differences with
intervals, resumable run by run, a changed setting refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

from elta_core.app.cli import main  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402


@pytest.fixture(scope="module")
def train_arguments(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare_data")
    export(generate(64, 24, seed=4), folder)
    return ["--labels", str(folder / "labels.csv"), "--format", "ava", "--images", str(folder / "images"),
            "--backbone", "resnet18", "--image-size", "24", "--epochs", "1", "--batch-size", "16",
            "--val-fraction", "0.25", "--workers", "0", "--round2-epochs", "1"]


def test_compare_writes_tables_with_intervals_and_resumes_run_by_run(train_arguments, tmp_path, capsys):
    out = tmp_path / "cmp"
    command = ["compare", "--methods", "baseline,elta", "--seeds", "2", "--out", str(out), "--quiet", "--",
               *train_arguments]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "| method - baseline | ΔP |" in printed and "over 2 seeds, without an interval" in printed
    report = json.loads((out / "compare.json").read_text())
    assert report["methods"] == ["baseline", "elta"] and report["seeds"] == [0, 1]
    difference = report["differences"]["elta"]["plcc"]
    assert difference["n"] == 2 and difference["low"] <= difference["mean"] <= difference["high"]
    assert (out / "compare.png").stat().st_size > 5_000 and (out / "compare.md").read_text().startswith("| method |")
    assert (out / "differences.png").stat().st_size > 5_000
    for method, flags in (("baseline", (False, 0.0)), ("elta", (True, 0.3))):  # FLSA at the default recipe's weight
        config = json.loads((out / "runs" / method / "seed1" / "manifest.json").read_text())["config"]
        assert (config["tfa"], config["flsa"], config["seed"]) == (*flags, 1)

    # again: every run is found finished (its checkpoint is not rewritten) and the report is the same
    checkpoint = out / "runs" / "elta" / "seed0" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    assert main(command) == 0
    assert checkpoint.stat().st_mtime_ns == before
    assert json.loads((out / "compare.json").read_text())["means"] == report["means"]

    # another setting for the same runs is refused by name, not reused
    capsys.readouterr()
    assert main([*command, "--lr", "0.01"]) == 2
    assert "lr: 0.001 -> 0.01" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--methods", "baseline,conr"], "methods: expected a comma-separated list of baseline"),
    (["--methods", "elta,elta"], "names a method twice"),
    (["--", "--labels", "x.csv", "--format", "ava", "--seed", "3"], "--seed are set by elta compare"),
    # argparse's abbreviations of the per-run flags, which would override compare's settings
    (["--", "--labels", "x.csv", "--format", "ava", "--see", "3"], "--seed are set by elta compare"),
    (["--", "--labels", "x.csv", "--format", "ava", "--see=3"], "--seed are set by elta compare"),
    (["--", "--labels", "x.csv", "--format", "ava", "--peers", "lds"], "--peers are set by elta compare"),
    (["--", "--labels", "x.csv", "--format", "ava", "--thresh", "0.5"], "--thresholds are set by elta compare"),
    (["--", "--labels", "x.csv", "--format", "ava", "--round1", "x"], "--round1-from are set by elta compare"),
    (["--methods", ""], "methods: expected a comma-separated list of baseline"),
])
def test_bad_compare_arguments_are_named(tmp_path, capsys, argv, message):
    assert main(["compare", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_apds_ablations_and_the_control_run_through_elta_train(train_arguments, tmp_path, capsys):
    images = train_arguments[train_arguments.index("--images") + 1]
    out = tmp_path / "ablations"
    assert main(["compare", "--methods", "elta+round2-control,elta+apds,elta+apds-prediction", "--seeds", "2",
                 "--out", str(out), "--quiet", "--", *train_arguments, "--unlabelled", images,
                 "--min-selected", "1"]) == 0
    assert "| method - elta+round2-control |" in capsys.readouterr().out  # APDS measured against its control
    import torch

    control = torch.load(out / "runs" / "elta+round2-control" / "seed0" / "self_training" / "selection.pt",
                         weights_only=True)
    assert len(control["indices"]) == 0 and int(control["num_selected"]) > 0  # selected, none kept: round 2 alone
    apds_run = torch.load(out / "runs" / "elta+apds" / "seed0" / "self_training" / "selection.pt", weights_only=True)
    assert len(apds_run["indices"]) > 0
    config = json.loads((out / "runs" / "elta+apds-prediction" / "seed1" / "manifest.json").read_text())["config"]
    assert config["pseudo_label"] == "prediction" and config["max_pseudo_labels"] == "labelled"


def test_every_method_is_a_valid_set_of_train_settings():
    from elta_core.app.config import train_settings
    from elta_core.app.methods import METHODS, SET_PER_RUN

    base = train_settings(["--labels", "x.csv", "--format", "ava"])
    for method, settings in METHODS.items():
        made = base.replace(**settings)
        assert made.tfa == settings["tfa"] and set(settings) <= set(SET_PER_RUN), method
    assert base.replace(**METHODS["ranksim"]).peers == ("ranksim",)
    # the settings a method fixes are what its flags set on the command line
    flags = ["--labels", "x.csv", "--format", "ava", "--tfa", "--apds", "--thresholds", "1e-9",  # FLSA: the recipe's
             "--max-pseudo-labels", "none"]
    assert train_settings(flags) == base.replace(**METHODS["elta+apds-whole-pool"])


def test_compare_runs_training_in_process_not_through_the_command_line(monkeypatch, tmp_path):
    from elta_core.app import cli, compare, config, run

    seen = []
    monkeypatch.setattr(cli, "main", lambda *a, **k: pytest.fail("compare went through the command line"))

    def fake_train(settings):
        seen.append(settings)
        folder = Path(settings.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"plcc": 0.5 + settings.seed / 10, "srcc": 0.5, "accuracy": 0.5,
                                                         "mse": 1.0, "mae_low": 1.0, "mae_medium": 1.0,
                                                         "mae_high": 1.0}))
        return {}

    monkeypatch.setattr(run, "train", fake_train)
    base = config.train_settings(["--labels", "x.csv", "--format", "ava", "--epochs", "3"])
    compare.compare(base, ["baseline", "lds"], [0, 1], tmp_path, progress=False)
    assert [(s.peers, s.seed, s.epochs, s.resume) for s in seen] == [
        ((), 0, 3, True), (("lds",), 0, 3, True), ((), 1, 3, True), (("lds",), 1, 3, True)]


def _runs(values):
    keys = ("plcc", "srcc", "accuracy", "mse", "mae_low", "mae_medium", "mae_high")
    return [{key: v for key in keys} for v in values]


def test_the_spread_is_the_sample_std_and_two_seeds_get_no_interval():
    from elta_core.app.compare import summarise

    two = summarise({"baseline": _runs([0.5, 0.7]), "elta": _runs([0.6, 0.9])}, "baseline")["markdown"]
    assert "0.600 ± 0.141" in two  # ddof 1: 0.1414; the population std (ddof 0) would print 0.100
    assert "| elta | +0.150 | +0.150 |" in two and "[" not in two.split("| method - baseline")[1].split("\n\n")[0]
    three = summarise({"baseline": _runs([0.5, 0.7, 0.6]), "elta": _runs([0.6, 0.9, 0.7])}, "baseline")["markdown"]
    assert "2 degrees of freedom" in three and "+0.133 [" in three


def test_one_progress_line_per_run_with_the_time_left(monkeypatch, tmp_path, capsys):
    from elta_core.app import compare, config, run

    def fake_train(settings):
        assert settings.quiet  # no epoch bars inside the runs: the compare line says where it is
        folder = Path(settings.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({k: 0.5 + settings.seed for k in (
            "plcc", "srcc", "accuracy", "mse", "mae_low", "mae_medium", "mae_high")}))

    monkeypatch.setattr(run, "train", fake_train)
    compare.compare(config.train_settings(["--labels", "x.csv", "--format", "ava"]), ["baseline", "tfa"], [0, 1, 2],
                    tmp_path, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compare: run")]
    assert len(lines) == 6 and "left)" not in lines[0] and "(5 done in" in lines[-1] and "left)" in lines[-1]


def test_loader_workers_and_threads_share_the_cores(monkeypatch):
    import torch

    from elta_core.app import config
    from elta_core.app.run import resources

    monkeypatch.setattr(resources, "default_workers", lambda: 8)
    assert resources.cpu_budget(None, None) == (4, 4)
    assert resources.cpu_budget(0, None) == (0, 4) and resources.cpu_budget(None, 2) == (6, 2)  # threads: not by workers
    monkeypatch.setattr(resources, "default_workers", lambda: 1)
    assert resources.cpu_budget(None, None) == (0, 1)
    before = torch.get_num_threads()
    settings = config.train_settings(["--labels", "x.csv", "--format", "ava", "--threads", "1", "--workers", "0"])
    with resources.torch_threads(settings):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_an_apds_method_without_a_validation_set_trains_its_own_round_1(train_arguments, tmp_path, capsys):
    """Without a validation set the APDS run holds training images out to calibrate on, so
    the elta run trained on other rows: its round 1 is not taken (it was, and refused)."""
    images = train_arguments[train_arguments.index("--images") + 1]
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "elta,elta+apds", "--seeds", "2", "--out", str(out), "--quiet", "--",
                 *train_arguments, "--unlabelled", images, "--min-selected", "1"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| elta+apds |" in printed
    manifest = json.loads((out / "runs" / "elta+apds" / "seed0" / "manifest.json").read_text())
    assert manifest["config"].get("round1_from") in (None, "")


def test_the_differences_picture_keeps_one_outlier_from_flattening_the_others():
    """Per metric a panel of its own scale; a method far outside the others is drawn at
    the edge with its value written, the rest keep a readable scale."""
    pytest.importorskip("matplotlib")
    from elta_core.app.compare import REPORTED
    from elta_core.app.plotting import paired_differences, pyplot

    cell = lambda mean, half: {"mean": mean, "low": mean - half, "high": mean + half, "n": 5}  # noqa: E731
    differences = {"tfa": {k: cell(0.02, 0.01) for k, _, _ in REPORTED},
                   "flsa": {k: cell(-0.03, 0.02) for k, _, _ in REPORTED},
                   "elta": {k: cell(0.04, 0.01) for k, _, _ in REPORTED},
                   "ranksim": {k: cell(-2.5, 0.4) for k, _, _ in REPORTED}}
    differences["elta"]["mae_high"] = None  # undefined: written, not drawn
    fig = paired_differences(differences, REPORTED, "baseline", "test")
    panels = [axis for axis in fig.axes if axis.has_data()]
    assert len(panels) == len(REPORTED)
    for axis in panels:
        low, high = axis.get_xlim()
        assert 0.05 < high < 1 and low == -high  # the others' ends (0.05), not the outlier's 2.9
        assert any("-2.5" in text.get_text() for text in axis.texts)  # the outlier's value, written
    pyplot().close(fig)

