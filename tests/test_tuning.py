"""``elta compare --tune``: every method's settings chosen under one budget on the
validation split, the test split never read; ``elta train --peer-settings`` and
``--evaluate-on validation``, which tuning is made of."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torchvision")

from elta_core.app import tuning  # noqa: E402
from elta_core.app.cli import main  # noqa: E402
from elta_core.app.config import TrainConfig, train_settings  # noqa: E402
from elta_core.app.methods import METHODS, SEARCH_SPACES, OnScale, point_label, search_points, tuned_as  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tuning_data")
    export(generate(72, 24, seed=5), folder, splits=(0.5, 0.25, 0.25))
    return folder


def arguments(folder: Path) -> list[str]:
    return ["--labels", str(folder / "train.csv"), "--val-labels", str(folder / "val.csv"), "--test-labels",
            str(folder / "test.csv"), "--format", "ava", "--images", str(folder / "images"), "--backbone", "resnet18",
            "--image-size", "24", "--epochs", "1", "--batch-size", "12", "--workers", "0"]


def test_search_spaces_are_prefixes_with_the_default_first_and_scale_dependent_values_scaled():
    assert search_points("baseline", 4, 1.0) == []  # nothing to tune
    assert search_points("ranksim", 2, 1.0) == [{"ranksim.weight": 100.0}, {"ranksim.weight": 1.0}]
    assert len(search_points("elta", 4, 1.0)) == 4 and search_points("elta", 1, 1.0) == [{"flsa": 0.3, "num_pairs": 1}]
    assert search_points("cmixup", 1, 0.5) == [{"cmixup.bandwidth": 0.25}]  # 0.5 points of 1..10 on a 1..5.5 scale
    assert isinstance(SEARCH_SPACES["cmixup"][0]["cmixup.bandwidth"], OnScale)
    assert tuned_as("elta+apds") == tuned_as("elta+round2-control") == "elta" and tuned_as("lds") == "lds"
    assert point_label({"flsa": 0.3, "num_pairs": 1}) == "flsa=0.3,num_pairs=1" and point_label({}) == "default"
    for method, points in SEARCH_SPACES.items():  # every setting is a train option or a setting of the method's peer
        peers = METHODS[method].get("peers", ())
        for key in {k for point in points for k in point}:
            assert key.split(".")[0] in peers if "." in key else key in TrainConfig.__dataclass_fields__


def test_peer_settings_reach_the_peer_and_bad_ones_are_named(data, tmp_path, capsys, monkeypatch):
    from elta_core.adapters.torch.peers import RankSim

    made, construct = [], RankSim.__init__

    @functools.wraps(construct)  # its signature is what --peer-settings is checked against
    def recording(self, *args, **kwargs):
        made.append(kwargs)
        construct(self, *args, **kwargs)

    monkeypatch.setattr(RankSim, "__init__", recording)
    out = tmp_path / "run"
    assert main(["train", *arguments(data), "--peers", "ranksim", "--no-tfa", "--flsa", "0", "--peer-settings",
                 "ranksim.weight=0.5", "--out", str(out), "--quiet"]) == 0
    assert made and all(kwargs == {"weight": 0.5} for kwargs in made)  # checked, then built
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["peer_settings"] == ["ranksim.weight=0.5"]
    for given, message in (("ranksim.weigth=1", "peer_settings: ranksim has no setting 'weigth' (its settings: "
                                                "weight, interpolation)"),
                           ("lds.sigma=2", "peer_settings: lds.sigma=2.0 sets lds, which --peers does not name"),
                           ("ranksim.weight=-1", "peer_settings: ranksim: weight: expected"),
                           ("ranksim.weight=big", "peer_settings: ranksim.weight: expected a number, got 'big'"),
                           ("ranksim.weight", "expected PEER.SETTING=VALUE"),
                           ("conr.weight=1", "expected PEER.SETTING=VALUE with PEER one of lds"),
                           ("ranksim.weight=nan", "expected a finite number")):
        capsys.readouterr()
        try:
            code = main(["train", *arguments(data), "--peers", "ranksim", "--peer-settings", given, "--out",
                         str(tmp_path / "refused"), "--quiet"])
        except SystemExit as exit:  # argparse's refusal of the syntax
            code = exit.code
        assert code == 2, given
        assert message in capsys.readouterr().err, given
        assert not (tmp_path / "refused").exists()  # refused before the run directory is made


def test_evaluate_on_validation_reads_no_test_row(data, tmp_path):
    out = tmp_path / "run"
    garbage = tmp_path / "test.csv"  # the test split's file is not opened (a missing one is still named)
    garbage.write_bytes(b"\xff\xfe not a label file")
    command = ["train", *arguments(data), "--no-tfa", "--flsa", "0", "--evaluate-on", "validation", "--out", str(out),
               "--quiet"]
    command[command.index("--test-labels") + 1] = str(garbage)
    assert main(command) == 0
    splits = {row.split(",")[1] for row in (out / "split.csv").read_text().splitlines()[1:]}
    assert splits == {"train", "validation"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "validation"
    validation_images = len((data / "val.csv").read_text().splitlines()) - 1
    assert sum(1 for _ in (out / "predictions.csv").open()) - 1 == validation_images


def test_a_run_recorded_before_peer_settings_and_evaluate_on_resumes(data, tmp_path, capsys):
    out = tmp_path / "run"
    run = ["train", *arguments(data), "--lr-schedule", "constant", "--out", str(out), "--quiet"]
    assert main([*run, "--epochs", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("peer_settings", "evaluate_on"):  # as a run of the version before them recorded it
        del manifest["config"][name]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main([*run, "--epochs", "2", "--resume"]) == 0
    assert main([*run, "--epochs", "2", "--resume", "--evaluate-on", "validation"]) == 2  # not what it recorded
    assert "evaluate_on" in capsys.readouterr().err


def test_tune_never_reads_the_test_split_chooses_resumes_and_names_the_choice(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    command = ["compare", "--methods", "baseline,ranksim", "--seeds", "2", "--tune", "2", "--tune-seeds", "1",
               "--out", str(out), "--quiet", "--", *arguments(data)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "tuning.json").read_text())
    trials = report["methods"]["ranksim"]["trials"]
    assert [t["setting"] for t in trials] == ["ranksim.weight=100", "ranksim.weight=1"]
    chosen = min(trials, key=lambda t: t["mean"])
    assert report["methods"]["ranksim"]["setting"] == chosen["setting"] and report["seeds"] == [1000]
    assert f"| ranksim | {chosen['setting']} |" in printed and "nothing to tune" in printed
    assert (out / "tuning.md").read_text().count("chosen") == 1
    weight = chosen["point"]["ranksim.weight"]
    for seed in (0, 1):  # every reported seed trained at the chosen setting
        config = json.loads((out / "runs" / "ranksim" / f"seed{seed}" / "manifest.json").read_text())["config"]
        assert config["peer_settings"] == [f"ranksim.weight={weight!r}"]
    assert json.loads((out / "compare.json").read_text())["tuning"]["ranksim"] == chosen["setting"]

    # the same tuning on a copy whose test split is gone (labels file garbage, images deleted), with every
    # image opening recorded: the same trials, to the bit, and no test image opened
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    test_images = [line.split(",")[0] + ".jpg" for line in (copy / "test.csv").read_text().splitlines()[1:]]
    for name in test_images:
        (copy / "images" / name).unlink()
    (copy / "test.csv").write_bytes(b"\xff\xfe garbage")
    import PIL.Image

    opened, open_image = [], PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: (opened.append(Path(path).name),
                                                                  open_image(path, *a, **k))[1])
    base = train_settings(arguments(copy)).replace(threads=1)
    again = tuning.tune(base, ["baseline", "ranksim"], 2, [1000], "mae", tmp_path / "copy_out", progress=False)
    assert opened and not set(opened) & set(test_images)
    assert [t["values"] for t in again["methods"]["ranksim"]["trials"]] == [t["values"] for t in trials]

    # run again: every trial and run is found finished; another criterion chooses again from the same trials
    checkpoint = out / "tuning" / "ranksim" / "ranksim.weight=1" / "seed1000" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    assert main(command) == 0
    by_plcc = ["compare", "--methods", "baseline,ranksim", "--seeds", "2", "--tune", "2", "--tune-seeds", "1",
               "--tune-criterion", "plcc", "--out", str(out), "--quiet", "--", *arguments(data)]
    assert main(by_plcc) == 0
    assert checkpoint.stat().st_mtime_ns == before
    assert json.loads((out / "tuning.json").read_text())["criterion"] == "plcc"


def test_a_diverging_trial_is_a_result_and_the_other_setting_is_chosen(data, tmp_path, monkeypatch):
    from elta_core.app import compare

    def diverge_at_weight_100(base, method, seed, out, methods=(), point=None, folder=None):
        if point == {"ranksim.weight": 100.0}:
            raise FloatingPointError("loss: NaN at step 1")
        return {"mae": 1.0, "mae_low": 1.0, "mae_high": 1.0, "mse": 1.0, "plcc": 0.5, "srcc": 0.5}

    monkeypatch.setattr(compare, "train_run", diverge_at_weight_100)
    base = train_settings(arguments(data))
    report = tuning.tune(base, ["ranksim"], 2, [1000, 1001], "mae", tmp_path, progress=False)
    assert report["methods"]["ranksim"]["setting"] == "ranksim.weight=1"
    assert "| ranksim | ranksim.weight=100 | diverged, diverged | undefined |" in (tmp_path / "tuning.md").read_text()
    assert json.loads((tmp_path / "tuning.json").read_text())["methods"]["ranksim"]["trials"][0]["mean"] is None


@pytest.mark.parametrize("argv,message", [
    (["--tune", "2", "--tune-criterion", "loss"], "--tune-criterion: invalid choice"),
    (["--tune", "-1"], "--tune: expected an int >= 0"),
])
def test_bad_tune_arguments_are_named(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as refused:
        main(["compare", "--out", str(tmp_path), *argv])
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


def test_tuning_on_a_per_seed_test_hold_out_is_refused(data, tmp_path, capsys):
    export(generate(40, 24, seed=6), tmp_path / "plain")  # labels.csv: no split column
    plain = ["--labels", str(tmp_path / "plain" / "labels.csv"), "--format", "ava", "--images",
             str(tmp_path / "plain" / "images"), "--epochs", "1"]
    assert main(["compare", "--methods", "baseline,ranksim", "--tune", "--out", str(tmp_path / "c"), "--quiet", "--",
                 *plain]) == 2
    assert "tune: " in (err := capsys.readouterr().err) and "has no test split" in err and "--test-labels" in err
    assert not (tmp_path / "c" / "tuning").exists()
