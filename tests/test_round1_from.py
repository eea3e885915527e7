"""``elta train --round1-from DIR``: an APDS run takes round 1 from another run instead of
training it again, to the same result, and only from a run that trained that round 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from elta_core.app.cli import main  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("round1_data")
    export(generate(64, 24, seed=5), folder)
    return folder


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> Path:
    """``elta``: a run without APDS; ``straight``: the same run with an APDS round, trained
    through."""
    folder = tmp_path_factory.mktemp("round1_runs")
    assert _train(data, folder / "elta") == 0
    assert _train(data, folder / "straight", *_apds(data)) == 0
    return folder


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--labels", str(data / "labels.csv"), "--format", "ava", "--images", str(data / "images"),
                 "--backbone", "resnet18", "--image-size", "24", "--batch-size", "16", "--epochs", "2",
                 "--val-fraction", "0.25", "--workers", "0", "--threads", "1", "--out", str(out), "--quiet", *extra])


def _apds(data: Path, *extra: str) -> list[str]:
    return ["--apds", "--unlabelled", str(data / "images"), "--calibration", str(data / "labels.csv"),
            "--thresholds", "0.05,0.1", "--min-selected", "2", "--round2-epochs", "1", *extra]


def _rows(out: Path) -> list[list[str]]:
    """metrics.csv without its seconds column (wall time differs from run to run)."""
    lines = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    keep = [k for k, name in enumerate(lines[0]) if name != "seconds"]
    return [[row[k] for k in keep] for row in lines]


def test_an_apds_run_from_another_runs_round_1_equals_the_run_trained_through(data, runs, tmp_path, capsys):
    out = tmp_path / "adopted"
    assert _train(data, out, *_apds(data), "--round1-from", str(runs / "elta")) == 0
    assert f"round 1: taken from {runs / 'elta'}, trained to epoch 2" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == json.loads((runs / "straight" / "metrics.json").read_text())
    assert _rows(out) == _rows(runs / "straight")
    # round 1's rows are the donor's own, its wall times included: it was not trained here
    assert (out / "metrics.csv").read_text().splitlines()[1:3] == [
        line + ",1" for line in (runs / "elta" / "metrics.csv").read_text().splitlines()[1:]]

    # resumed, the run resumes its own round 1: nothing is copied or trained again
    rows = (out / "metrics.csv").read_text()
    assert _train(data, out, *_apds(data), "--round1-from", str(runs / "elta"), "--resume") == 0
    assert "round 1: taken from" not in capsys.readouterr().out and (out / "metrics.csv").read_text() == rows


def test_an_apds_run_may_take_round_1_from_another_apds_run(data, runs, tmp_path):
    """The APDS run's checkpoint holds round 2's model, and round 1's state to resume from."""
    out = tmp_path / "control"
    assert _train(data, out, *_apds(data, "--max-pseudo-labels", "0"), "--round1-from", str(runs / "straight")) == 0
    assert _rows(out)[:3] == _rows(runs / "straight")[:3]


def test_the_best_epoch_is_taken_with_round_1_under_select_best(data, tmp_path):
    """Under --select-best round 2 starts from best.pt, which is taken too."""
    best = ["--select-best", "srcc", "--epochs", "3"]
    assert _train(data, tmp_path / "elta", *best) == 0
    assert _train(data, tmp_path / "straight", *best, *_apds(data)) == 0
    assert _train(data, tmp_path / "adopted", *best, *_apds(data), "--round1-from", str(tmp_path / "elta")) == 0
    assert (tmp_path / "adopted" / "best.pt").read_bytes() == (tmp_path / "elta" / "best.pt").read_bytes()
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("straight", "adopted")]
    assert metrics[0] == metrics[1]


def test_round_1_is_taken_only_from_a_run_that_trained_it(data, runs, tmp_path, capsys):
    """Each refusal names --round1-from and what differs; nothing is recorded in the run."""
    other = tmp_path / "other"
    assert _train(data, other, "--flsa", "0.5") == 0
    unfinished = tmp_path / "unfinished"
    assert _train(data, unfinished, "--stop-after-epoch", "1") == 0
    labels = tmp_path / "labels.csv"  # a donor on a copy of the labels, which then change under the same name
    shutil.copyfile(data / "labels.csv", labels)
    donor_on_copy = ["--labels", str(labels), "--format", "ava", "--images", str(data / "images"), "--backbone",
                     "resnet18", "--image-size", "24", "--batch-size", "16", "--epochs", "2", "--val-fraction",
                     "0.25", "--workers", "0", "--threads", "1", "--quiet"]
    assert main(["train", *donor_on_copy, "--out", str(tmp_path / "relabelled")]) == 0
    capsys.readouterr()
    cases = [
        (other, _apds(data), "trained another round 1 (flsa: 0.5 there, 0.3 here)"),
        (unfinished, _apds(data), "has trained 1 of round 1's 2 epochs; finish it first"),
        (tmp_path, _apds(data), "is not an elta train run directory (no manifest.json)"),
        (runs / "elta", [], "round1_from: only with --apds"),
    ]
    for k, (donor, extra, message) in enumerate(cases):
        out = tmp_path / f"refused{k}"
        assert _train(data, out, *extra, "--round1-from", str(donor)) == 2
        assert message in capsys.readouterr().err
        assert "checkpoint" not in json.loads((out / "manifest.json").read_text())["stages"]
    lines = labels.read_text().splitlines()
    first = lines[1].split(",")  # one vote moved from score 3 to score 2
    first[1], first[2] = str(int(first[1]) + 1), str(int(first[2]) - 1)
    labels.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    assert main(["train", *donor_on_copy, "--out", str(tmp_path / "other_data"), *_apds(data),
                 "--round1-from", str(tmp_path / "relabelled")]) == 2
    assert "trained on other data (labels)" in capsys.readouterr().err


def test_a_damaged_donor_checkpoint_is_refused(data, runs, tmp_path, capsys):
    donor = tmp_path / "donor"
    shutil.copytree(runs / "elta", donor)
    raw = bytearray((donor / "checkpoint.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (donor / "checkpoint.pt").write_bytes(bytes(raw))
    out = tmp_path / "run"
    assert _train(data, out, *_apds(data), "--round1-from", str(donor)) == 2
    assert "does not match the checksum recorded" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("garble,found", [
    (lambda text: text.encode("utf-8")[:40] + b"\xff\xfe" + text.encode("utf-8")[40:], "can't decode byte 0xff"),
    (lambda text: text.replace("image,split", "image;split").encode(), "its header is ['image;split']"),
    (lambda text: text.replace(",train", ",trian", 1).encode(), "line 2 is not an image and one of its splits"),
])
def test_a_garbled_donor_split_csv_is_named_with_the_remedy(data, runs, tmp_path, capsys, garble, found):
    donor = tmp_path / "donor"
    shutil.copytree(runs / "elta", donor)
    (donor / "split.csv").write_bytes(garble((donor / "split.csv").read_text(encoding="utf-8")))
    assert _train(data, tmp_path / "run", *_apds(data), "--round1-from", str(donor)) == 2
    error = capsys.readouterr().err
    assert f"split: {donor / 'split.csv'} is damaged (" in error and found in error, error
    assert "train round 1 here (leave out --round1-from)" in error


@pytest.mark.parametrize("fault,message", [
    ("disk full", "could not be written"),
    ("bytes changed", "changed while it was copied"),
])
def test_a_copy_that_fails_is_not_recorded_and_the_run_is_taken_again(data, runs, tmp_path, capsys, monkeypatch,
                                                                       fault, message):
    from elta_core.app.run import adopt

    copy = shutil.copyfileobj

    def failing(source, target, length=0):
        if fault == "disk full":
            target.write(source.read(1000))
            raise OSError(28, "No space left on device")
        copy(source, target, length)
        target.write(b"!")

    monkeypatch.setattr(adopt.shutil, "copyfileobj", failing)
    out = tmp_path / "run"
    assert _train(data, out, *_apds(data), "--round1-from", str(runs / "elta")) == 2
    assert message in capsys.readouterr().err
    assert "checkpoint" not in json.loads((out / "manifest.json").read_text())["stages"]
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint.pt")]  # no temporary file left

    monkeypatch.setattr(adopt.shutil, "copyfileobj", copy)
    assert _train(data, out, *_apds(data), "--round1-from", str(runs / "elta"), "--resume") == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((runs / "straight" / "metrics.json").read_text())


def test_compare_trains_round_1_once_for_the_apds_methods(data, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "elta,elta+apds,elta+round2-control", "--seeds", "2", "--out", str(out),
                 "--quiet", "--", "--labels", str(data / "labels.csv"), "--format", "ava", "--images",
                 str(data / "images"), "--backbone", "resnet18", "--image-size", "24", "--batch-size", "16",
                 "--epochs", "2", "--val-fraction", "0.25", "--workers", "0", "--unlabelled", str(data / "images"),
                 "--calibration", str(data / "labels.csv"), "--min-selected", "2", "--round2-epochs", "1"]) == 0
    for seed in (0, 1):
        elta = (out / "runs" / "elta" / f"seed{seed}" / "metrics.csv").read_text().splitlines()[1:]
        for method in ("elta+apds", "elta+round2-control"):
            rows = (out / "runs" / method / f"seed{seed}" / "metrics.csv").read_text().splitlines()[1:3]
            assert rows == [line + ",1" for line in elta]  # elta's round 1, wall times included


def test_round_2_resumes_the_best_epochs_optimizer_from_another_runs_round_1(data, tmp_path):
    """``--select-best`` with ``--round2-resume-optimizer`` (``--recipe paper``): the donor
    ran without APDS, and its ``best.pt`` must still keep the best epoch's optimizer, or
    round 2 resumes the last epoch's optimizer on the best epoch's weights."""
    best = ["--select-best", "srcc", "--round2-resume-optimizer", "--epochs", "3"]
    assert _train(data, tmp_path / "donor", *best) == 0
    saved = torch.load(tmp_path / "donor" / "best.pt", weights_only=True)
    assert "optimizer" in saved and saved["optimizer"]["state"]
    assert _train(data, tmp_path / "straight", *best, *_apds(data)) == 0
    assert _train(data, tmp_path / "adopted", *best, *_apds(data), "--round1-from", str(tmp_path / "donor")) == 0
    assert json.loads((tmp_path / "adopted" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "straight" / "metrics.json").read_text())


def test_a_run_without_apds_reads_a_best_pt_without_optimizer_state(data, tmp_path, monkeypatch):
    """A ``best.pt`` written before it kept the optimizer (an older elta): a run without
    --apds never resumes round 2 from it, so it finishes (only an APDS run refuses it)."""
    from elta_core.app.run import round1

    written = round1.load_checkpoint_file

    def without_optimizer(path, device):
        state = written(path, device)
        return {k: v for k, v in state.items() if k != "optimizer"} if path.name == "best.pt" else state

    monkeypatch.setattr(round1, "load_checkpoint_file", without_optimizer)
    assert _train(data, tmp_path / "plain", "--select-best", "srcc", "--round2-resume-optimizer") == 0
    assert _train(data, tmp_path / "apds", "--select-best", "srcc", "--round2-resume-optimizer", *_apds(data)) == 2
