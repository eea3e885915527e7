import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from elta_core.app.cli import main  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """64 synthetic images written as PNG files with an AVA-format label CSV."""
    folder = tmp_path_factory.mktemp("synthetic")
    labels = export(generate(64, 32, seed=3), folder)
    return labels, folder / "images"


def _train(labels, images, out, *extra):
    return main([
        "train", "--labels", str(labels), "--format", "ava", "--images", str(images), "--backbone", "resnet18",
        "--image-size", "32", "--batch-size", "16", "--epochs", "2", "--tfa", "--flsa", "1.0", "--val-fraction", "0.25",
        "--out", str(out), "--quiet", *extra,
    ])


def test_train_resume_evaluate_and_pseudo_label(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    out = tmp_path / "run"
    assert _train(labels, images, out, "--stop-after-epoch", "1") == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert "stopped after epoch 1" in capsys.readouterr().out

    assert _train(labels, images, out, "--resume") == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "after epoch 1" in printed
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    result = json.loads((out / "metrics.json").read_text())
    assert {"plcc", "srcc", "accuracy", "mae_low", "mae_medium", "mae_high"} <= set(result)
    epochs = (out / "metrics.csv").read_text().splitlines()
    assert epochs[0].startswith("epoch,lr,loss") and [row.split(",")[0] for row in epochs[1:]] == ["1", "2"]
    assert (out / "predictions.csv").read_text().startswith("image,true_score,predicted_score,p_1,")

    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--labels", str(labels), "--format", "ava",
                 "--images", str(images), "--out", str(out / "eval"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in ("P (PLCC)", "S (SRCC)", "accuracy", "L (low MAE)", "M (medium MAE)", "H (high MAE)"):
        assert name in printed
    assert json.loads((out / "eval" / "evaluation.json").read_text())["num_images"] == 64

    assert main(["pseudo-label", "--checkpoint", str(out / "checkpoint.pt"), "--calibration", str(labels), "--format", "ava",
                 "--images", str(images), "--unlabelled", str(images), "--min-selected", "1",
                 "--thresholds", "0.05,0.1", "--out", str(out / "pseudo"), "--quiet"]) == 0
    assert "t* " in capsys.readouterr().out
    rows = (out / "pseudo" / "pseudo_labels.csv").read_text().splitlines()
    assert rows[0].startswith("image,score,p_1,p_2") and len(rows) > 1
    assert (out / "pseudo" / "grid.md").exists()

    # A barely trained model reaches none of the paper's thresholds: with --thresholds paper a clear
    # error, exit code 2; the default ('auto') then searches the calibration set's own quantiles.
    assert main(["pseudo-label", "--checkpoint", str(out / "checkpoint.pt"), "--calibration", str(labels), "--format", "ava",
                 "--images", str(images), "--unlabelled", str(images), "--out", str(out / "none"), "--quiet",
                 "--thresholds", "paper"]) == 2
    err = capsys.readouterr().err
    assert "min_selected: no (beta, threshold) cell selects at least 11" in err and "the paper's grid" in err
    assert main(["pseudo-label", "--checkpoint", str(out / "checkpoint.pt"), "--calibration", str(labels), "--format", "ava",
                 "--images", str(images), "--unlabelled", str(images), "--out", str(out / "auto"), "--quiet"]) == 0
    assert "thresholds: the paper's grid selected fewer than min_selected; quantiles" in capsys.readouterr().out


def test_train_with_apds_round(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    calibration = tmp_path / "calibration.csv"
    calibration.write_text("\n".join(labels.read_text().splitlines()[:41]) + "\n")  # header + 40 images
    out = tmp_path / "apds"
    code = main([
        "train", "--labels", str(labels), "--format", "ava", "--images", str(images), "--image-size", "32",
        "--batch-size", "16", "--epochs", "1", "--apds", "--unlabelled", str(images), "--val-fraction", "0.25", "--round2-epochs", "1",
        "--thresholds", "0.05,0.1", "--min-selected", "2", "--calibration", str(calibration),
        "--out", str(out), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    assert (out / "self_training" / "round2.pt").exists() and "APDS: beta*" in capsys.readouterr().out
    assert torch.load(out / "self_training" / "calibration.pt", weights_only=True)["logits"].shape == (40, 10)
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 16


def test_apds_never_calibrates_on_the_test_split_unless_asked(folder_dataset, tmp_path, capsys):
    """Without a validation set, --apds grid-searched (beta, t) on the test split and then
    reported the round-2 model's test metrics: a choice made on the data it is judged on."""
    labels, images = folder_dataset
    apds = ["--apds", "--unlabelled", str(images), "--thresholds", "0.05,0.1", "--min-selected", "2", "--epochs", "1",
            "--round2-epochs", "1"]
    assert _train(labels, images, tmp_path / "held", *apds) == 0
    printed = capsys.readouterr().out
    assert "holding out 12 training images to calibrate" in printed
    assert "calibrated on 12 training images held out for it; thresholds: given" in printed
    calibration = torch.load(tmp_path / "held" / "self_training" / "calibration.pt", weights_only=True)
    assert calibration["logits"].shape == (12, 10)  # 64 images: 16 test, 12 of the other 48 to calibrate
    assert json.loads((tmp_path / "held" / "metrics.json").read_text())["num_images"] == 16

    assert _train(labels, images, tmp_path / "test", *apds, "--calibrate-on", "test") == 0  # by name only
    assert "calibrated on the test split (--calibrate-on test)" in capsys.readouterr().out
    assert torch.load(tmp_path / "test" / "self_training" / "calibration.pt", weights_only=True)["logits"].shape == (16, 10)


def test_missing_and_corrupt_images(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    broken = tmp_path / "images"
    broken.mkdir()
    for path in sorted(images.iterdir())[:64]:
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "0.jpg").write_bytes(b"not a jpeg")
    (broken / "1.jpg").unlink()
    assert _train(labels, broken, tmp_path / "fails", "--epochs", "1") == 2
    error = capsys.readouterr().err
    assert "image:" in error and ("0.jpg" in error or "1.jpg" in error)
    assert _train(labels, broken, tmp_path / "skips", "--epochs", "1", "--skip-unreadable") == 0
    assert json.loads((tmp_path / "skips" / "metrics.json").read_text())["skipped_images"] == 2


def test_bad_cli_inputs(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    assert main(["train", "--labels", str(tmp_path / "none.csv"), "--format", "ava", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _train(labels, images, tmp_path / "y", "--backbone", "resnet_nope") == 2
    assert "backbone: unknown torchvision model 'resnet_nope'" in capsys.readouterr().err
    assert _train(labels, images, tmp_path / "z", "--align-at", "layer4.9") == 2
    assert "align_at: ResNet has no submodule 'layer4.9' (nearest names: layer4" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--labels", str(labels), "--format", "ava"]) == 2
    assert "checkpoint: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stats", str(labels), "--format", "jpeg"])


@pytest.mark.slow
def test_demo_quick_writes_table_and_picture(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from elta_core.app import demo

    # --quick's path at a quarter of its size: the full --quick took 171 s of the suite
    monkeypatch.setattr(demo, "QUICK", replace(demo.QUICK, train=300, calibration=150, unlabelled=300, test=300,
                                               epochs=2, round2_epochs=2))
    assert main(["demo", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    from elta_core.app.demo import CONTROL

    for row in ("baseline", "+TFA", "+FLSA", "+TFA+FLSA", "+TFA+FLSA+APDS", CONTROL, "LDS", "RankSim"):
        assert f"| {row} |" in printed
    assert "| method - baseline | ΔP |" in printed and "95 % Student-t interval" in printed
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "results.json").read_text())
    assert len(report["results"]["baseline"]) == 3  # (its time is in the README, not asserted: CI may be busy)
    control = report["differences"][CONTROL]["plcc"]
    assert control["n"] == 3 and control["low"] <= control["mean"] <= control["high"]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resumed_train_is_bit_identical_to_the_uninterrupted_run(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    assert _train(labels, images, tmp_path / "straight", "--epochs", "3") == 0
    assert _train(labels, images, tmp_path / "resumed", "--epochs", "3", "--stop-after-epoch", "1") == 0
    assert _train(labels, images, tmp_path / "resumed", "--epochs", "3", "--resume") == 0
    straight, resumed = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(tmp_path / "resumed" / "checkpoint.pt")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["config"]["lr"] == 1e-3 and manifest["config"]["lr_schedule"] == "cosine"  # from scratch
    assert "checkpoint" in manifest["stages"] and manifest["inputs"]["labels"]


def test_a_cosine_run_resumes_bit_identically_and_refuses_other_epochs(folder_dataset, tmp_path, capsys):
    import csv
    import math

    labels, images = folder_dataset
    cosine = ("--epochs", "3", "--lr-schedule", "cosine")
    assert _train(labels, images, tmp_path / "straight", *cosine) == 0
    assert _train(labels, images, tmp_path / "resumed", *cosine, "--stop-after-epoch", "1") == 0
    assert _train(labels, images, tmp_path / "resumed", *cosine, "--resume") == 0
    straight, resumed = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(tmp_path / "resumed" / "checkpoint.pt")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    rows = list(csv.DictReader((tmp_path / "resumed" / "metrics.csv").open()))
    assert [float(row["lr"]) for row in rows] == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])
    capsys.readouterr()
    # the epochs already trained followed a 3-epoch schedule: a 4-epoch run is another run
    assert _train(labels, images, tmp_path / "resumed", "--epochs", "4", "--lr-schedule", "cosine", "--resume") == 2
    err = capsys.readouterr().err
    assert "epochs: the run's cosine schedule was set for 3 epochs, so it cannot resume with 4" in err, err


def test_checkpoint_every_n_epochs_and_a_crash_after_it_resumes_bit_identically(folder_dataset, tmp_path, capsys,
                                                                                monkeypatch):
    """--checkpoint-every 2 writes epochs 2 and 4 (and the last, 5). A run that dies in
    epoch 4 has metrics.csv rows for epochs 1..3 but a checkpoint of epoch 2: the resumed
    run trains 3 and 4 again, equals the uninterrupted one, and lists each epoch once."""
    import csv

    from elta_core.adapters.torch import ELTAWrapper
    from elta_core.adapters.torch.checkpoints import Checkpointer

    labels, images = folder_dataset
    saved = []
    save = Checkpointer.save

    def recording(self, stage, state, *args, **kwargs):
        if stage == "checkpoint":
            saved.append(state["epoch"])
        return save(self, stage, state, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", recording)
    every = ("--epochs", "5", "--checkpoint-every", "2")
    assert _train(labels, images, tmp_path / "straight", *every) == 0
    assert saved == [2, 4, 5]

    steps, forward = {"n": 0}, ELTAWrapper.forward

    def crashing(self, x, y=None):
        if y is not None and self.training:
            steps["n"] += 1
            if steps["n"] == 3 * 3 + 2:  # 3 steps an epoch (48 training images, batch 16): epoch 4's second
                raise RuntimeError("injected crash")
        return forward(self, x, y)

    monkeypatch.setattr(ELTAWrapper, "forward", crashing)
    saved.clear()
    assert _train(labels, images, tmp_path / "crashed", *every) == 1
    assert saved == [2]
    rows = list(csv.DictReader((tmp_path / "crashed" / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    monkeypatch.setattr(ELTAWrapper, "forward", forward)
    saved.clear()
    assert _train(labels, images, tmp_path / "crashed", *every, "--resume") == 0
    assert saved == [4, 5] and "resuming from" in capsys.readouterr().out
    straight, resumed = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(tmp_path / "crashed" / "checkpoint.pt")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    rows = list(csv.DictReader((tmp_path / "crashed" / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5"]
    expected = list(csv.DictReader((tmp_path / "straight" / "metrics.csv").open()))
    assert [row["loss"] for row in rows] == [row["loss"] for row in expected]


def test_flsa_aligns_where_align_at_says(folder_dataset, tmp_path, capsys, monkeypatch):
    from elta_core.adapters.torch import ELTAWrapper

    seen = []
    capture = ELTAWrapper._capture_layer_output

    def recording(self, module, args, output):
        seen.append(tuple(output.shape[1:]))
        return capture(self, module, args, output)

    monkeypatch.setattr(ELTAWrapper, "_capture_layer_output", recording)
    labels, images = folder_dataset
    assert _train(labels, images, tmp_path / "run", "--epochs", "1", "--align-at", "layer4.1.bn2") == 0
    assert seen and set(seen) == {(512, 1, 1)}  # layer4's last BatchNorm at 32 px, before the residual and the ReLU


def test_a_run_recorded_before_the_lr_schedule_existed_resumes_as_constant(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    out = tmp_path / "run"
    old = ("--lr", "1e-4", "--lr-schedule", "constant")  # what every run did before the option
    assert _train(labels, images, out, *old, "--epochs", "1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["config"]["lr_schedule"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert _train(labels, images, out, "--lr", "1e-4", "--epochs", "2", "--resume") == 2  # the new default: cosine
    assert "another configuration (lr_schedule: 'constant' -> 'cosine')" in capsys.readouterr().err
    assert _train(labels, images, out, *old, "--epochs", "2", "--resume") == 0


def test_run_directory_refuses_stale_state(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    out = tmp_path / "run"
    constant = ("--lr-schedule", "constant")  # a constant rate, so that --resume may add epochs
    assert _train(labels, images, out, *constant, "--epochs", "1") == 0
    capsys.readouterr()
    assert _train(labels, images, out, *constant, "--epochs", "1") == 2
    assert "is not empty (an earlier run?); pass --resume" in capsys.readouterr().err
    assert _train(labels, images, out, *constant, "--epochs", "1", "--resume", "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert "another configuration (lr: 0.001 -> 0.01)" in err and "Traceback" not in err
    assert _train(labels, images, out, *constant, "--epochs", "1", "--resume", "--seed", "5") == 2
    assert "seed: 0 -> 5" in capsys.readouterr().err
    assert _train(labels, images, out, *constant, "--epochs", "2", "--resume") == 0
    assert "resume: epochs changed from 1 to 2" in capsys.readouterr().out
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    assert _train(labels, images, out, *constant, "--epochs", "3", "--resume") == 2
    assert "checkpoint.pt: does not match the checksum" in capsys.readouterr().err
    file_out = tmp_path / "a_file"
    file_out.write_text("x")
    assert _train(labels, images, file_out) == 2
    assert "is a file; give a directory" in capsys.readouterr().err


def test_divergence_stops_with_a_named_error_and_keeps_the_last_good_checkpoint(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    out = tmp_path / "run"
    assert _train(labels, images, out, "--epochs", "1") == 0
    good = _weights(out / "checkpoint.pt")
    capsys.readouterr()
    assert _train(labels, images, out, "--epochs", "3", "--resume", "--lr", "1e30") == 2  # refused: lr changed
    capsys.readouterr()
    diverging = tmp_path / "diverging"
    assert _train(labels, images, diverging, "--epochs", "2", "--lr", "1e30") == 2
    err = capsys.readouterr().err
    assert "epoch 1/2: diverged at step" in err or "the weights became NaN or Inf" in err, err
    if (diverging / "checkpoint.pt").exists():
        state = _weights(diverging / "checkpoint.pt")
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def finished_run(folder_dataset, tmp_path_factory):
    labels, images = folder_dataset
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train(labels, images, out, "--epochs", "1") == 0
    return out


@pytest.mark.parametrize("flag,value,name", [
    ("--num-pairs", "3", "num_pairs"), ("--flsa", "0.5", "flsa"), ("--image-size", "40", "image_size"),
    ("--batch-size", "8", "batch_size"), ("--val-fraction", "0.5", "val_fraction"), ("--backbone", "resnet34", "backbone"),
    ("--no-tfa", None, "tfa"),
    ("--round2", "separate", "round2"), ("--betas", "2,3", "betas"), ("--pseudo-label", "prediction", "pseudo_label"),
    ("--lr-schedule", "constant", "lr_schedule"),
])
def test_resume_refuses_each_changed_setting_by_name(folder_dataset, finished_run, tmp_path, capsys, flag, value, name):
    import shutil

    labels, images = folder_dataset
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    capsys.readouterr()
    assert _train(labels, images, out, "--epochs", "1", "--resume", *([flag] if value is None else [flag, value])) == 2
    err = capsys.readouterr().err
    assert f"another configuration ({name}:" in err and len(err.strip().splitlines()) == 1, err


def test_resume_refuses_a_changed_label_file(folder_dataset, finished_run, tmp_path, capsys):
    import shutil

    labels, images = folder_dataset
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    changed = tmp_path / "labels.csv"
    changed.write_text(labels.read_text().replace(",0,0,0\n", ",0,0,1\n", 1))
    capsys.readouterr()
    assert main(["train", "--labels", str(changed), "--format", "ava", "--images", str(images), "--backbone",
                 "resnet18", "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--tfa", "--flsa", "1.0",
                 "--val-fraction", "0.25", "--out", str(out), "--quiet", "--resume"]) == 2
    assert "labels" in capsys.readouterr().err


def test_demo_runs_of_another_configuration_never_share_stages(tmp_path):
    from elta_core.app.demo import FULL, QUICK, run_folder

    assert run_folder(tmp_path, QUICK) != run_folder(tmp_path, FULL)
    assert run_folder(tmp_path, QUICK) == run_folder(tmp_path, QUICK)



def test_help_shows_defaults_and_examples_and_version(capsys):
    import subprocess
    import sys

    from elta_core import __version__

    for command in ("demo", "synth", "stats", "prepare", "train", "evaluate", "predict", "pseudo-label", "export",
                    "doctor", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and f"elta {command}" in text, command
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "learning rate (at the start of --lr-schedule) (default: 0.001 from scratch, 0.0001 with --weights or " \
        "--pretrained; --recipe paper: 1e-05)" in text
    assert "the optimizer (default: adamw; --recipe paper: adam)" in text
    assert "(default: 8/7 of --image-size; --recipe paper: 300 (x 300))" in text
    assert "--thresholds" in text and "(default: auto)" in text
    # help that agrees with the run: a default of 0 is shown, and the defaults say what the run does
    assert "seeds the split, the model, the data order and TFA (default: 0)" in text
    assert "less this process's --threads" in text
    assert "(default: as --calibrate-on says: the validation set, else training images held out for it" in text
    assert "--tfa, --no-tfa Tail Feature Augmentation (--no-tfa: off) (default: True)" in text
    assert "FLSA weight gamma (0: off) (default: 0.3; --recipe paper: 1.0)" in text
    version = subprocess.run([sys.executable, "-m", "elta_core", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"elta {__version__}"


def test_synth_and_csv_columns(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "data"), "--count", "20", "--image-size", "16"]) == 0
    assert len(list((tmp_path / "data" / "images").iterdir())) == 20
    capsys.readouterr()
    custom = tmp_path / "custom.csv"
    custom.write_text("file,rating\na.jpg,0.2\nb.jpg,0.9\n")
    assert main(["stats", str(custom), "--format", "csv", "--image-column", "file", "--score-column", "rating",
                 "--scale", "0,1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"] == 2 and summary["rescaled"]
    assert main(["stats", str(custom), "--format", "csv"]) == 2
    assert "missing column(s) image" in capsys.readouterr().err


def test_a_finished_apds_run_resumes_with_more_epochs_like_the_longer_run(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    apds = ["--apds", "--unlabelled", str(images), "--thresholds", "0.05,0.1", "--min-selected", "2",
            "--round2-epochs", "1", "--lr-schedule", "constant"]  # a constant rate: --resume may add epochs
    assert _train(labels, images, tmp_path / "long", "--epochs", "2", *apds) == 0
    assert _train(labels, images, tmp_path / "grown", "--epochs", "1", *apds) == 0
    assert _train(labels, images, tmp_path / "grown", "--epochs", "2", "--resume", *apds) == 0, capsys.readouterr().err
    long, grown = _weights(tmp_path / "long" / "checkpoint.pt"), _weights(tmp_path / "grown" / "checkpoint.pt")
    for name in long:
        assert torch.equal(long[name], grown[name]), name
    assert _train(labels, images, tmp_path / "grown", "--epochs", "2", "--resume", *apds) == 0
    again = _weights(tmp_path / "grown" / "checkpoint.pt")
    for name in long:
        assert torch.equal(long[name], again[name]), f"{name}: a finished run resumed as it is changes nothing"
    assert torch.load(tmp_path / "grown" / "checkpoint.pt", weights_only=True)["round"] == 2


def _round2_run(images, *extra) -> list[str]:
    """``elta train`` arguments for one epoch of round 1 and one of round 2, at a constant rate."""
    return ["--epochs", "1", "--apds", "--unlabelled", str(images), "--thresholds", "0.05,0.1", "--min-selected", "2",
            "--round2-epochs", "1", "--lr-schedule", "constant", *extra]


def _record_round2_rates(monkeypatch) -> list[set[float]]:
    """The learning rates of each round-2 fit from now on, read after it (the schedule sets
    them from its base); round 1's fit is elta train's own and is not recorded."""
    from elta_core.adapters.torch import self_training

    rates, fit = [], self_training.fit

    def recording(wrapper, loader, optimizer, *args, **kwargs):
        losses = fit(wrapper, loader, optimizer, *args, **kwargs)
        rates.append({group["lr"] for group in optimizer.param_groups})
        return losses

    monkeypatch.setattr(self_training, "fit", recording)
    return rates


@pytest.mark.parametrize("resume_optimizer", ["--no-round2-resume-optimizer", "--round2-resume-optimizer"])
def test_round2_lr_sets_round_2s_rate_and_a_resume_with_another_retrains_round_2_only(folder_dataset, tmp_path, capsys,
                                                                                      monkeypatch, resume_optimizer):
    labels, images = folder_dataset
    apds = _round2_run(images, resume_optimizer)
    rates = _record_round2_rates(monkeypatch)
    assert _train(labels, images, tmp_path / "run", *apds, "--round2-lr", "2e-5") == 0, capsys.readouterr().err
    assert rates == [{2e-5}]
    rates.clear()
    assert _train(labels, images, tmp_path / "other", *apds, "--round2-lr", "7e-5") == 0
    other = _weights(tmp_path / "other" / "checkpoint.pt")
    rates.clear()
    assert _train(labels, images, tmp_path / "run", *apds, "--round2-lr", "7e-5", "--resume") == 0
    assert rates == [{7e-5}], "round 2 trained again at the new rate"
    resumed = _weights(tmp_path / "run" / "checkpoint.pt")
    for name in other:
        assert torch.equal(other[name], resumed[name]), f"{name}: not the run trained at 7e-5 from the start"
    capsys.readouterr()
    for bad in ("0", "-1e-3", "nan"):
        assert _train(labels, images, tmp_path / f"bad{bad}", *apds, f"--round2-lr={bad}") == 2
        assert f"round2_lr: expected a finite learning rate > 0, got {float(bad)}" in capsys.readouterr().err


def test_a_round_2_trained_under_another_default_rate_is_trained_again_on_resume(folder_dataset, tmp_path, capsys,
                                                                                   monkeypatch):
    """Round 2's default rate is the learning rate over recipe.ROUND2_LR_DIVISOR. A run
    whose round 2 was trained under another divisor (the old default, 4) is not current
    when resumed under the new one: round 2 is trained again, at the new rate."""
    from elta_core.app import recipe

    labels, images = folder_dataset
    apds = _round2_run(images, "--lr", "1e-3")
    rates = _record_round2_rates(monkeypatch)
    monkeypatch.setattr(recipe, "ROUND2_LR_DIVISOR", 4)
    assert _train(labels, images, tmp_path / "run", *apds) == 0, capsys.readouterr().err
    assert rates == [{1e-3 / 4}]
    rates.clear()
    assert _train(labels, images, tmp_path / "run", *apds, "--resume") == 0
    assert rates == [], "the same default: round 2 reused"
    monkeypatch.setattr(recipe, "ROUND2_LR_DIVISOR", 40)
    assert _train(labels, images, tmp_path / "run", *apds, "--resume") == 0
    assert rates == [{1e-3 / 40}], "round 2 trained again at the new default"


def test_peers_resume_with_their_state(folder_dataset, tmp_path, capsys):
    """FDS's running statistics and Balanced MSE's noise scale are part of the checkpoint:
    a run stopped after epoch 1 and resumed equals the uninterrupted one, and another
    --peers for the same run directory is refused by name."""
    labels, images = folder_dataset
    peers = ("--peers", "fds,bmse,cmixup,ranksim", "--epochs", "3")
    assert _train(labels, images, tmp_path / "straight", *peers) == 0
    assert _train(labels, images, tmp_path / "resumed", *peers, "--stop-after-epoch", "1") == 0
    assert _train(labels, images, tmp_path / "resumed", *peers, "--resume") == 0
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for name in straight["model"]:
        assert torch.equal(straight["model"][name], resumed["model"][name]), name
    assert torch.equal(straight["peers"]["1.noise_sigma"], resumed["peers"]["1.noise_sigma"])
    fds = straight["peers"]["0._extra_state"]
    assert torch.equal(fds["running"]["mean"], resumed["peers"]["0._extra_state"]["running"]["mean"])
    capsys.readouterr()
    assert _train(labels, images, tmp_path / "resumed", "--peers", "fds", "--epochs", "3", "--resume") == 2
    assert "peers: ['fds', 'bmse', 'cmixup', 'ranksim'] -> ['fds']" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (("--head", "sigmoid", "--peers", "lds"), "peers: lds changes the task loss, and --head sigmoid has its own"),
    (("--peers", "lds,bmse"), "peers: lds and bmse both change the task loss"),
    (("--peers", "lds,conr"), "expected a comma-separated list of lds, fds, ranksim, cmixup, bmse, got conr"),
])
def test_bad_peers_are_refused_before_the_run_directory_is_touched(folder_dataset, tmp_path, capsys, extra, message):
    labels, images = folder_dataset
    out = tmp_path / "run"
    try:
        code = _train(labels, images, out, *extra)
    except SystemExit as exit:  # argparse's own refusal
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_failed_before_its_first_epoch_is_not_an_earlier_run(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    out = tmp_path / "early"
    assert _train(labels, tmp_path / "no-images", out, "--epochs", "1") == 2  # fails at the first image
    assert (out / "manifest.json").exists() and "--images" in capsys.readouterr().err
    assert _train(labels, images, out, "--epochs", "1", "--lr", "2e-4") == 0, capsys.readouterr().err  # no --resume


def test_synth_refuses_a_folder_with_other_images(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--count", "6", "--image-size", "16"]) == 0
    assert main(["synth", "--out", str(tmp_path), "--count", "6", "--image-size", "16", "--seed", "1"]) == 0  # same names
    assert main(["synth", "--out", str(tmp_path), "--count", "4", "--image-size", "16"]) == 2
    assert "already holds 2 file(s) this dataset would not write" in capsys.readouterr().err
    assert len(list((tmp_path / "images").iterdir())) == 6


def test_a_run_shows_its_tails(folder_dataset, tmp_path, capsys):
    """The picture beside predictions.csv, each image's segment, every loss term per epoch
    (and per round-2 epoch), the tails' sizes with a warning under 30 images, and
    elta evaluate on the run's own test split without --labels."""
    labels, images = folder_dataset
    out = tmp_path / "run"
    apds = ["--apds", "--unlabelled", str(images), "--thresholds", "0.05,0.1", "--min-selected", "2",
            "--round2-epochs", "2", "--epochs", "1"]
    assert _train(labels, images, out, *apds) == 0
    printed = capsys.readouterr().out
    assert "L and H over 3 images each (the low and high 20 % of 16)" in printed and "warning: a tail of 3" in printed
    assert (out / "predictions.png").stat().st_size > 10_000
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].endswith(",segment") and sum(r.endswith(",low") for r in rows[1:]) == 3
    epochs = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    header = epochs[0]
    assert header[:5] == ["epoch", "lr", "loss", "flsa_loss", "task_loss"] and header[-1] == "round"
    assert [(r[0], r[-1]) for r in epochs[1:]] == [("1", "1"), ("2", "2"), ("3", "2")]
    assert all(float(r[4]) > 0 for r in epochs[1:])  # the task loss of every epoch, round 2 included

    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--images", str(images), "--out",
                 str(tmp_path / "eval"), "--quiet"]) == 0  # no --labels: the run's file and test split
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["num_images"] == 16
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--labels", str(labels), "--format", "ava",
                 "--images", str(images), "--split", "test", "--quiet"]) == 0  # an AVA file has no split column
    assert "over 3 images each" in capsys.readouterr().out


def test_numbers_that_would_describe_another_model_are_refused_before_training(folder_dataset, tmp_path, capsys):
    labels, images = folder_dataset
    out = tmp_path / "run"
    assert _train(labels, images, out, "--epochs", "2") == 0
    before = (out / "manifest.json").read_text()
    assert _train(labels, images, out, "--epochs", "1", "--resume") == 2
    assert "has trained 2 epochs; --epochs 1 would report" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == before  # refused before the manifest took the new setting

    # the test set is the training set
    assert _train(labels, images, tmp_path / "same", "--test-labels", str(labels)) == 2
    assert "test_labels: 64 of the 64 test images are also training images" in capsys.readouterr().err
    # a split name that is no split
    odd = tmp_path / "odd.csv"
    odd.write_text("image,score,split\n" + "".join(f"{k}.jpg,{1 + k % 9},{'tst' if k < 8 else 'train'}\n"
                                                    for k in range(40)))
    assert main(["train", "--labels", str(odd), "--format", "csv", "--split-column", "split", "--images", str(images),
                 "--out", str(tmp_path / "odd-run"), "--quiet"]) == 2
    assert "names split(s) 'tst'; expected train, validation" in capsys.readouterr().err
    for extra, message in ((["--val-fraction", "nan"], "val_fraction: expected a fraction in (0, 1), got nan"),
                           (["--apds"], "unlabelled: --apds needs --unlabelled")):
        assert _train(labels, images, tmp_path / "x", *extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not (tmp_path / "x" / "checkpoint.pt").exists()


def test_resume_after_an_image_changed_is_refused(folder_dataset, tmp_path, capsys):
    import os
    import shutil

    labels, images = folder_dataset
    copied = tmp_path / "images"
    shutil.copytree(images, copied)
    out = tmp_path / "run"
    assert _train(labels, copied, out, "--epochs", "1", "--lr-schedule", "constant") == 0
    target = copied / "5.jpg"
    target.write_bytes((copied / "6.jpg").read_bytes())  # other pixels under the same name
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert _train(labels, copied, out, "--epochs", "2", "--lr-schedule", "constant", "--resume") == 2
    assert "the input data changed since the run started (images)" in capsys.readouterr().err


@pytest.mark.parametrize("choice", [["--select-best", "srcc"], ["--apds", "--unlabelled", "POOL"]])
def test_a_validation_file_that_is_the_test_file_is_refused_where_it_chooses(folder_dataset, tmp_path, capsys, choice):
    """With --select-best the best epoch, with --apds the (beta, t), would be chosen on the
    test set: refused before training, naming --val-labels."""
    labels, images = folder_dataset
    rows = labels.read_text().splitlines()
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("\n".join([rows[0]] + rows[1:40]) + "\n")
    test.write_text("\n".join([rows[0]] + rows[40:]) + "\n")
    choice = [str(images) if arg == "POOL" else arg for arg in choice]
    out = tmp_path / "run"
    assert main(["train", "--labels", str(train), "--format", "ava", "--images", str(images), "--test-labels", str(test),
                 "--val-labels", str(test), "--backbone", "resnet18", "--image-size", "32", "--epochs", "1", "--quiet",
                 "--out", str(out), *choice]) == 2
    error = capsys.readouterr().err
    assert "val_labels: 25 of the 25 validation images are also test images" in error and "--val-labels" in error
    assert not (out / "checkpoint.pt").exists()


def test_resume_accepts_the_same_folders_spelled_another_way(folder_dataset, tmp_path, capsys, monkeypatch):
    """``--images DIR/``, ``./DIR`` and a relative path name the folder the run started with."""
    labels, images = folder_dataset
    out = tmp_path / "run"
    assert _train(labels, images, out, "--epochs", "1") == 0
    monkeypatch.chdir(images.parent)
    for spelling in (f"{images}/", f"./{images.name}", f"../{images.parent.name}/{images.name}"):
        assert _train(f"./{labels.name}", spelling, out, "--epochs", "1", "--resume") == 0, capsys.readouterr().err
    assert "another configuration" not in capsys.readouterr().err
    other = tmp_path / "other_images"
    shutil.copytree(images, other)
    (other / "0.jpg").write_bytes((other / "1.jpg").read_bytes())  # another folder, other images: refused
    assert _train(labels, other, out, "--epochs", "1", "--resume") == 2
    assert "images" in capsys.readouterr().err


def test_a_second_train_on_the_same_out_is_refused_while_the_first_runs(folder_dataset, tmp_path, capsys):
    """Two runs started at once on one --out both finished and both wrote it."""
    import fcntl
    import os

    labels, images = folder_dataset
    out = tmp_path / "run"
    out.mkdir()
    holder = os.open(out, os.O_RDONLY)  # what a running elta train holds
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _train(labels, images, out, "--epochs", "1") == 2
        assert "out: another elta train is running in" in capsys.readouterr().err
        assert list(out.iterdir()) == []
    finally:
        os.close(holder)
    assert _train(labels, images, out, "--epochs", "1") == 0  # free again: it runs


def test_a_killed_run_leaves_no_lock_behind_in_a_loader_worker_that_outlives_it(tmp_path):
    """A DataLoader worker is a fork of the run and inherits its descriptors; killed, the
    run left its lock on --out with the worker for as long as the worker lived on (up to
    its next check of its parent), and a --resume started at once was refused."""
    import os
    import signal
    import subprocess
    import sys

    from elta_core.app.run.directory import run_lock

    out = tmp_path / "run"
    script = ("import os, signal, sys, time\n"
              "from elta_core.app.run.directory import run_lock\n"
              "with run_lock(sys.argv[1]):\n"
              "    worker = os.fork()\n"
              "    if worker == 0:  # the loader worker, alive after the run (its output not the test's pipe)\n"
              "        quiet = os.open(os.devnull, os.O_RDWR); os.dup2(quiet, 1); os.dup2(quiet, 2)\n"
              "        time.sleep(60); os._exit(0)\n"
              "    print(worker, flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    worker = int(killed.stdout)
    try:
        with run_lock(str(out)):  # refused before: the orphaned worker held it
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


def test_evaluate_without_labels_uses_the_runs_test_labels_file(folder_dataset, tmp_path, capsys):
    """A run trained with --test-labels: ``elta evaluate --checkpoint`` alone evaluates on
    that file (it read the training file's rows as a test split that came from elsewhere)."""
    labels, images = folder_dataset
    rows = labels.read_text().splitlines()
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("\n".join([rows[0]] + rows[1:45]) + "\n")
    test.write_text("\n".join([rows[0]] + rows[45:]) + "\n")
    out = tmp_path / "run"
    assert _train(train, images, out, "--test-labels", str(test), "--epochs", "1") == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "eval"),
                 "--quiet"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluated["num_images"] == 20 == trained["num_images"]  # the test file's 20 images
    assert evaluated["plcc"] == pytest.approx(trained["plcc"], abs=1e-6)


def test_a_file_with_train_and_validation_rows_only_tests_on_them_and_says_so(folder_dataset, tmp_path, capsys):
    """Its validation rows are the test split (as the help says); with --test-labels they
    are the validation set, where they were dropped (neither trained nor validated on)."""
    import csv

    _, images = folder_dataset
    table = tmp_path / "split.csv"
    table.write_text("image,score,split\n" + "".join(
        f"{k}.jpg,{1 + k % 9},{'validation' if k < 12 else 'test' if k >= 56 else 'train'}\n" for k in range(64)))
    two = tmp_path / "two.csv"
    two.write_text("".join(line for line in table.read_text().splitlines(keepends=True) if not line.endswith("test\n")))
    tested = tmp_path / "tested.csv"
    tested.write_text("image,score,split\n" + "".join(line + "\n" for line in table.read_text().splitlines()[1:]
                                                       if line.endswith("test")))
    common = ["train", "--labels", str(two), "--format", "csv", "--split-column", "split", "--images", str(images),
              "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--workers", "0", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert "its validation rows are the test split" in capsys.readouterr().out

    def splits(run):
        with open(run / "split.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))
        return {name: sorted(Path(r["image"]).name for r in rows if r["split"] == name) for name in
                ("train", "validation", "test")}

    validation_rows = sorted(f"{k}.jpg" for k in range(12))
    assert splits(tmp_path / "a")["test"] == validation_rows
    assert main([*common, "--test-labels", str(tested), "--select-best", "srcc", "--out", str(tmp_path / "b")]) == 0
    assert "validation rows are the test split" not in capsys.readouterr().out
    chosen = splits(tmp_path / "b")
    assert chosen["validation"] == validation_rows and len(chosen["test"]) == 8 and len(chosen["train"]) == 44
