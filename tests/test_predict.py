"""``elta predict`` and ``load_model``: a checkpoint scores images that have no labels, with
the preprocessing it was evaluated with."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from elta_core.app.cli import main  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402
from elta_core.io import TEMPORARY_SUFFIX  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run (1 epoch, a 10-level distribution head) and its data."""
    folder = tmp_path_factory.mktemp("predict")
    export(generate(40, 32, seed=8), folder / "data")
    assert main(["train", "--labels", str(folder / "data" / "labels.csv"), "--format", "ava", "--images",
                 str(folder / "data" / "images"), "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                 "--val-fraction", "0.25", "--workers", "0", "--threads", "1", "--quiet",
                 "--out", str(folder / "run")]) == 0
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_a_folder_is_scored_as_elta_evaluate_scores_its_test_split(run, tmp_path):
    """The scores of ``elta predict`` are those ``elta evaluate`` computes for the same images
    (the same checkpoint, the same preprocessing); a row per image, sorted, with the std
    and the distribution of each."""
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    evaluated = _rows(run / "run" / "predictions.csv")
    for row in evaluated:
        shutil.copy(row["image"], photos / Path(row["image"]).name)
    assert main(["predict", "--checkpoint", str(run / "run" / "checkpoint.pt"), "--images", str(tmp_path / "photos"),
                 "--out", str(tmp_path / "scores.csv"), "--workers", "0", "--quiet"]) == 0
    scored = _rows(tmp_path / "scores.csv")
    assert [r["image"] for r in scored] == sorted(f"nested/{Path(r['image']).name}" for r in evaluated)
    expected = {Path(r["image"]).name: float(r["predicted_score"]) for r in evaluated}
    for row in scored:
        assert float(row["score"]) == pytest.approx(expected[Path(row["image"]).name], abs=2e-5)
        distribution = np.array([float(row[f"p_{v}"]) for v in range(1, 11)])
        assert distribution.sum() == pytest.approx(1, abs=1e-5)
        mean = distribution @ np.arange(1, 11)
        assert float(row["std"]) == pytest.approx(np.sqrt(distribution @ (np.arange(1, 11) - mean) ** 2), abs=1e-4)


def test_load_model_scores_one_photo_as_the_command_does(run, tmp_path):
    from elta_core.adapters.torch.data import open_image
    from elta_core.app.predict import load_model

    scorer, transform = load_model(run / "run" / "checkpoint.pt", "cpu")
    image = next((run / "data" / "images").glob("*.jpg"))
    with torch.no_grad():
        one = scorer(transform(open_image(str(image))))
        distribution = scorer.distribution(transform(open_image(str(image)))[None])
    assert one.shape == () and distribution.shape == (1, 10)
    assert float(one) == pytest.approx(float(distribution[0] @ torch.arange(1.0, 11.0)), abs=1e-5)
    assert main(["predict", "--checkpoint", str(run / "run" / "checkpoint.pt"), "--labels",
                 str(run / "data" / "labels.csv"), "--format", "ava", "--images", str(run / "data" / "images"),
                 "--out", str(tmp_path / "all.csv"), "--workers", "0", "--quiet"]) == 0
    scored = {r["image"]: float(r["score"]) for r in _rows(tmp_path / "all.csv")}
    assert len(scored) == 40 and scored[image.name] == pytest.approx(float(one), abs=2e-5)


def test_an_unreadable_photo_stops_the_run_by_name_or_is_skipped_and_listed(run, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(run / "data" / "images", photos)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "scores.csv"
    arguments = ["predict", "--checkpoint", str(run / "run" / "checkpoint.pt"), "--images", str(photos), "--out",
                 str(out), "--workers", "0", "--quiet", "--batch-size", "16"]
    assert main(arguments) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(f"*{TEMPORARY_SUFFIX}"))  # nothing half-written
    assert main([*arguments, "--skip-unreadable"]) == 0
    assert len(_rows(out)) == 40
    assert (tmp_path / "scores.skipped.txt").read_text().split() == ["broken.jpg"]
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out


def test_a_run_killed_midway_leaves_the_earlier_scores_and_no_partial_file(run, tmp_path, monkeypatch):
    from elta_core.app import predict

    out = tmp_path / "scores.csv"
    out.write_text("image,score\nearlier.jpg,5\n")
    arguments = ["predict", "--checkpoint", str(run / "run" / "checkpoint.pt"), "--images",
                 str(run / "data" / "images"), "--out", str(out), "--workers", "0", "--quiet", "--batch-size", "8"]
    calls = {"n": 0}
    scoring = predict.Scorer.predict

    def failing(self, x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C in the third batch
        return scoring(self, x)

    monkeypatch.setattr(predict.Scorer, "predict", failing)
    with pytest.raises(KeyboardInterrupt):
        main(arguments)
    assert out.read_text() == "image,score\nearlier.jpg,5\n"
    assert not list(tmp_path.glob(f"*{TEMPORARY_SUFFIX}"))


def test_bad_arguments_are_named(run, tmp_path, capsys):
    checkpoint = str(run / "run" / "checkpoint.pt")
    assert main(["predict", "--checkpoint", checkpoint, "--out", str(tmp_path / "s.csv")]) == 2
    assert "images: give a folder of images (--images) or a label file (--labels)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", checkpoint, "--images", str(tmp_path / "empty")]) == 2
    assert "images: no images in" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, "--labels", str(run / "data" / "labels.csv")]) == 2
    assert "format: give --format with --labels" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, "--images", str(run / "data" / "labels.csv")]) == 2
    assert "labels.csv is a file; give the folder of images" in capsys.readouterr().err


def test_an_image_name_that_is_not_utf8_is_refused_by_name_before_any_prediction(run, tmp_path, capsys,
                                                                                    monkeypatch):
    """A CSV of results cannot name a file whose name is not UTF-8: ``elta pseudo-label``
    found that out after predicting the calibration set and the pool."""
    import os

    from elta_core.app import pseudo_label

    photos = tmp_path / "photos"
    shutil.copytree(run / "data" / "images", photos)
    os.rename(photos / "0.jpg", os.path.join(os.fsencode(photos), b"caf\xe9.jpg"))  # a Latin-1 name
    monkeypatch.setattr(pseudo_label, "predict_dataset", lambda *a, **k: pytest.fail("predicted before the check"))
    checkpoint = str(run / "run" / "checkpoint.pt")
    assert main(["pseudo-label", "--checkpoint", checkpoint, "--calibration", str(run / "data" / "labels.csv"),
                 "--format", "ava", "--images", str(run / "data" / "images"), "--unlabelled", str(photos), "--out",
                 str(tmp_path / "pseudo"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "unlabelled: the file name" in error and "caf\\xe9.jpg" in error and "rename it" in error
    assert main(["predict", "--checkpoint", checkpoint, "--images", str(photos), "--out", str(tmp_path / "s.csv"),
                 "--quiet"]) == 2
    assert "images: the file name" in capsys.readouterr().err and not (tmp_path / "s.csv").exists()


def test_labels_on_another_rating_scale_are_refused_naming_both_files(run, tmp_path, capsys):
    """A 1..10 model evaluated, or calibrated, on 1..5 labels: its scores would be compared
    with scores they do not measure (pseudo-label did so silently)."""
    other = tmp_path / "five.csv"
    names = sorted(p.name for p in (run / "data" / "images").glob("*.jpg"))[:20]
    other.write_text("image,score\n" + "".join(f"{name},{1 + k % 5}\n" for k, name in enumerate(names)))
    checkpoint = str(run / "run" / "checkpoint.pt")
    on_five = ["--format", "csv", "--scale", "1,5", "--images", str(run / "data" / "images")]
    assert main(["evaluate", "--checkpoint", checkpoint, "--labels", str(other), *on_five]) == 2
    error = capsys.readouterr().err
    assert "five.csv rates on 10 levels 1..5" in error and "checkpoint.pt predicts 10 levels 1..10" in error
    assert main(["pseudo-label", "--checkpoint", checkpoint, "--calibration", str(other), *on_five, "--unlabelled",
                 str(run / "data" / "images"), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "five.csv rates on 10 levels 1..5" in capsys.readouterr().err
