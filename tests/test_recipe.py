"""``elta train`` with timm backbones, the authors' heads and ``--recipe paper``: per-epoch
validation, best-checkpoint selection, predictions.csv, and ``elta evaluate`` reproducing
the reported test metrics."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("timm")

from elta_core.app import cli, models, recipe  # noqa: E402
from elta_core.app.run.round2 import round2_optimizer  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402

SMALL = ["--image-size", "32", "--resize", "36", "--batch-size", "8", "--epochs", "3", "--quiet"]


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("splits")
    export(generate(80, 36, seed=5), folder, splits=(0.6, 0.2, 0.2), seed=5)
    return folder


def _files(folder):
    return ["--format", "ava", "--images", str(folder / "images"), "--labels", str(folder / "train.csv"),
            "--val-labels", str(folder / "val.csv"), "--test-labels", str(folder / "test.csv")]


def _rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_paper_recipe_with_timm_writes_epochs_best_and_predictions(split_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *_files(split_data), "--backbone", "timm/test_efficientnet", "--recipe", "paper",
                     *SMALL, "--out", str(out)]) == 0
    assert "best epoch" in capsys.readouterr().out

    config = json.loads((out / "manifest.json").read_text())["config"]
    paper = {name: value for name, (_, value) in recipe.RECIPE_ITEMS.items()}
    assert config["optimizer"] == paper["optimizer"] == "adam" and config["lr"] == paper["lr"] == 1e-5
    assert config["select_best"] == "srcc" and config["eval_transform"] == "resize"
    assert config["head"] == "emd-mlp"  # vote counts: the authors' EMD head
    assert config["num_pairs"] == paper["num_pairs"] == 1  # the authors' one TFA pair per batch
    assert config["flsa"] == paper["flsa"] == 1.0  # the authors' FLSA weight
    assert (config["image_size"], config["resize"], config["batch_size"], config["epochs"]) == (32, 36, 8, 3)

    epochs = _rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    assert {"loss", "val_plcc", "val_srcc", "val_mse", "val_mae_low", "seconds"} <= set(epochs[0])
    result = json.loads((out / "metrics.json").read_text())
    best_epoch = max(epochs, key=lambda r: float(r["val_srcc"]))["epoch"]
    assert result["checkpoint"] == "best.pt" and result["best_epoch"] == int(best_epoch)
    assert result["best_val_srcc"] == pytest.approx(float(max(float(r["val_srcc"]) for r in epochs)), abs=1e-5)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == int(best_epoch) and best["config"]["head_type"] == "emd-mlp"

    predictions = _rows(out / "predictions.csv")
    test_count = len((split_data / "test.csv").read_text().splitlines()) - 1
    assert len(predictions) == test_count == result["num_images"]
    assert list(predictions[0])[:4] == ["image", "true_score", "predicted_score", "p_1"]
    assert all(abs(sum(float(r[f"p_{k}"]) for k in range(1, 11)) - 1) < 1e-4 for r in predictions)

    # elta evaluate on the best checkpoint reproduces the reported test metrics and predictions
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--labels", str(split_data / "test.csv"),
                     "--format", "ava", "--images", str(split_data / "images"), "--batch-size", "5",
                     "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    again = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    # batches of 5 here, 8 in training: float32 sums in other shapes differ in their last bits
    for name in ("plcc", "srcc", "accuracy", "mse", "mae_low", "mae_medium", "mae_high"):
        assert again[name] == pytest.approx(result[name], abs=1e-4), name
    reproduced = _rows(tmp_path / "eval" / "predictions.csv")
    assert [r["image"] for r in reproduced] == [r["image"] for r in predictions]
    assert all(abs(float(a["predicted_score"]) - float(b["predicted_score"])) < 1e-4
               for a, b in zip(reproduced, predictions))


def test_a_flag_overrides_the_recipe(split_data, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *_files(split_data), "--backbone", "resnet18", "--recipe", "paper", *SMALL,
                     "--epochs", "1", "--optimizer", "adamw", "--lr", "3e-4", "--select-best", "plcc",
                     "--eval-transform", "crop", "--head", "linear", "--out", str(out)]) == 0
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["optimizer"], config["lr"], config["select_best"], config["eval_transform"], config["head"]) == \
        ("adamw", 3e-4, "plcc", "crop", "linear")
    assert config["batch_size"] == 8 and config["round2_resume_optimizer"] is True  # the rest from the recipe
    assert "best_val_plcc" in json.loads((out / "metrics.json").read_text())


def test_the_default_recipe_trains_from_scratch_with_its_measured_rate_and_fine_tunes_with_the_earlier_one():
    from elta_core.app.config import TrainConfig

    base = TrainConfig(labels="x.csv", format="ava")
    scratch = recipe.resolve(base, True)
    assert (scratch.lr, scratch.lr_schedule) == (1e-3, "cosine")
    tuned = recipe.resolve(base.replace(weights="w.pth"), True)
    assert (tuned.lr, tuned.lr_schedule) == (1e-4, "constant")
    assert recipe.resolve(base.replace(weights="w.pth", lr=3e-4), True).lr == 3e-4  # a flag wins
    paper = recipe.resolve(base.replace(recipe="paper"), True)
    assert (paper.lr, paper.lr_schedule) == (1e-5, "constant")
    assert "default: 0.001 from scratch, 0.0001 with --weights" in recipe.recipe_help("lr", "learning rate")


def _score_file(folder, tmp_path):
    """The synthetic votes as a score-only CSV (as TAD66K), with a split column."""
    lines = (folder / "labels.csv").read_text().splitlines()[1:]
    rows = ["image,score,split"]
    for k, line in enumerate(lines):
        counts = [int(v) for v in line.split(",")[1:11]]
        score = sum(c * level for c, level in zip(counts, range(1, 11))) / sum(counts)
        rows.append(f"{line.split(',')[0]}.jpg,{score:.4f},{('train', 'train', 'train', 'validation', 'test')[k % 5]}")
    path = tmp_path / "scores.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sigmoid_head_on_score_labels_uses_the_file_splits(split_data, tmp_path):
    labels = _score_file(split_data, tmp_path)
    common = ["train", "--labels", str(labels), "--format", "csv", "--split-column", "split", "--images",
              str(split_data / "images"), "--backbone", "resnet18", "--recipe", "paper", *SMALL, "--epochs", "2"]
    out = tmp_path / "run"
    assert cli.main([*common, "--out", str(out)]) == 0
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["head"] == "sigmoid"  # scores only: the authors' sigmoid head
    predictions = _rows(out / "predictions.csv")
    assert list(predictions[0]) == ["image", "true_score", "predicted_score", "segment"]
    assert len(predictions) == 16  # the file's test split
    assert all(0 < float(r["predicted_score"]) < 10 for r in predictions)
    assert len(_rows(out / "metrics.csv")) == 2 and "val_srcc" in _rows(out / "metrics.csv")[0]

    code = cli.main([*common, "--apds", "--unlabelled", str(split_data / "images"), "--out", str(tmp_path / "a")])
    assert code == 2


def test_sigmoid_head_is_the_authors_head_scaled_to_the_rating_scale():
    model, head, _ = models.build_model("timm/test_efficientnet", 10, "sigmoid", top=10.0)
    assert head == "classifier"
    layers = list(model.classifier)
    assert isinstance(layers[0], torch.nn.Dropout) and layers[0].p == 0.75
    assert layers[1].out_features == 1 and layers[2].top == 10.0
    model.eval()
    scores = model(torch.randn(3, 3, 32, 32))
    assert scores.shape == (3, 1) and ((scores > 0) & (scores < 10)).all()


def test_swinv2_gets_the_authors_emd_head_at_timm_classifier():
    model, head, _ = models.build_model("timm/swinv2_base_window8_256", 10, "emd-mlp")
    assert head == "head.fc"
    mlp = model.head.fc
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear"]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (1024, 64, 10)


def test_local_weights_safetensors_and_pth_load_the_backbone(tmp_path):
    from safetensors.torch import save_file

    import timm

    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)  # an ImageNet head
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model, _, skipped = models.build_model("timm/test_efficientnet", 10, "emd-mlp", str(tmp_path / name))
        assert skipped and all(k.startswith("classifier.") for k in skipped)
        assert torch.equal(model.conv_stem.weight, source.conv_stem.weight), name


def test_weights_of_another_model_are_refused(tmp_path):
    import timm

    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"weights: .*resnet.pth does not fit this backbone: .* tensors do not match"):
        models.build_model("timm/test_efficientnet", 10, "linear", str(tmp_path / "resnet.pth"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        models.build_model("timm/test_efficientnet", 10, "linear", str(tmp_path / "broken.safetensors"))


def test_unknown_timm_model_and_missing_timm_are_clear(monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"timm has no model 'swinv2_base_window8_265'.*nearest: swinv2_base_window8_256"):
        models.create_backbone("timm/swinv2_base_window8_265", 10)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r'pip install "elta-core\[timm\]"'):
        models.create_backbone("timm/test_resnet", 10)


def test_the_demo_model_is_a_backbone_with_no_published_weights():
    from elta_core.app import demo

    torch.manual_seed(0)
    model, head, skipped = models.build_model(demo.DEMO_MODEL, 7)
    assert isinstance(model, models.SmallCNN) and head == "head" and skipped == []
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"elta_core has no model 'elta/big-cnn' \(its own: elta/small-cnn\)"):
        models.create_backbone("elta/big-cnn", 10)
    with pytest.raises(ValueError, match="pretrained: elta/small-cnn has no published weights"):
        models.create_backbone("elta/small-cnn", 10, pretrained="default")


def test_round2_resumes_a_copy_of_the_optimizer_state():
    parameter = torch.nn.Parameter(torch.ones(3))
    first = torch.optim.Adam([parameter], lr=0.1)
    parameter.grad = torch.ones(3)
    first.step()
    saved = first.state_dict()
    before = saved["state"][0]["exp_avg"].clone()

    class Args:
        optimizer, lr, round2_resume_optimizer, round2_lr = "adam", 0.1, True, None

    resumed = round2_optimizer(Args, {"optimizer": saved})([parameter])
    assert resumed.state_dict()["state"][0]["step"] == 1
    parameter.grad = torch.ones(3)
    resumed.step()
    assert torch.equal(saved["state"][0]["exp_avg"], before)  # the saved round-1 state is untouched
    Args.round2_resume_optimizer = False
    fresh = round2_optimizer(Args, {"optimizer": saved})([parameter])
    assert not fresh.state_dict()["state"]
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 / recipe.ROUND2_LR_DIVISOR)


def test_paper_recipe_with_apds_resumes_and_evaluate_reproduces(split_data, tmp_path, capsys):
    """The authors' round 2: from the best epoch, the full schedule again with the
    round-1 optimizer; interrupted after epoch 1 and resumed."""
    common = ["train", *_files(split_data), "--backbone", "resnet18", "--recipe", "paper", *SMALL, "--epochs", "2",
              "--apds", "--unlabelled", str(split_data / "images"), "--min-selected", "1", "--out", str(tmp_path / "r")]
    assert cli.main([*common, "--stop-after-epoch", "1"]) == 0
    assert cli.main([*common, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "APDS: beta*" in printed
    config = json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]
    assert config["round2_epochs"] == 2 and config["round2_resume_optimizer"] is True
    result = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert result["checkpoint"] == "checkpoint.pt"
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "r" / "checkpoint.pt"), "--labels",
                     str(split_data / "test.csv"), "--format", "ava", "--images", str(split_data / "images"),
                     "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    again = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    # evaluated in batches of 32 here, of --batch-size in training: last-bit differences only
    assert again["srcc"] == pytest.approx(result["srcc"], abs=1e-4)
    assert again["mse"] == pytest.approx(result["mse"], abs=1e-4)


@pytest.mark.parametrize("every", [[], ["--checkpoint-every", "100"]])
def test_select_best_resumed_equals_uninterrupted_and_a_damaged_best_is_refused(split_data, tmp_path, capsys, every):
    """With --checkpoint-every too: each new best.pt is checkpointed with it, so the run
    resumed after epoch 2 knows which epoch best.pt holds."""
    common = ["train", *_files(split_data), "--backbone", "resnet18", "--recipe", "paper", *SMALL, "--lr", "1e-3",
              *every]
    assert cli.main([*common, "--out", str(tmp_path / "straight")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "resumed"), "--stop-after-epoch", "2"]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    without_time = lambda path: [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(path)]  # noqa: E731
    assert without_time(tmp_path / "straight" / "metrics.csv") == without_time(tmp_path / "resumed" / "metrics.csv")
    straight, resumed = (torch.load(tmp_path / run / "best.pt", weights_only=True) for run in ("straight", "resumed"))
    assert straight["epoch"] == resumed["epoch"]
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])

    # best.pt damaged after the run: resuming the finished run must not test another model
    best = tmp_path / "resumed" / "best.pt"
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main([*common, "--out", str(tmp_path / "resumed"), "--resume"]) == 2
    assert "best.pt" in capsys.readouterr().err


def test_undefined_metrics_are_null_in_json_and_named_never_nan(tmp_path):
    from elta_core.app.run.reports import format_metrics, write_metrics

    result = {"plcc": float("nan"), "srcc": float("nan"), "accuracy": 0.5, "mse": 8.5, "mae_low": 3.5,
              "mae_medium": 1.5, "mae_high": 4.5}
    write_metrics(result, tmp_path, "evaluation")  # before: 'refusing to write NaN' after a whole run
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written["plcc"] is None and written["undefined_metrics"] == ["plcc", "srcc"] and written["mse"] == 8.5
    assert (tmp_path / "evaluation.csv").read_text().splitlines()[1].startswith("undefined,undefined,0.5")
    assert "P (PLCC): undefined (constant predictions?)" in format_metrics(result)


def test_weights_that_only_partly_fit_or_are_not_weights_are_refused(tmp_path):
    """A resnet34 file loaded into resnet18 (its 96 extra tensors were ignored), integer tensors cast to
    float, NaN weights that only showed as 'training diverged': each named."""
    from safetensors.torch import save_file

    import torchvision

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"r34.pth has 96 tensor\(s\) this backbone does not have, e.g. layer1.2"):
        models.build_model("resnet18", 10, "linear", str(tmp_path / "r34.pth"))
    state = {k: v.contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    save_file({**state, "conv1.weight": state["conv1.weight"].to(torch.int32)}, tmp_path / "ints.safetensors")
    with pytest.raises(ValueError, match="conv1.weight is torch.int32 in the file, a float in the model"):
        models.build_model("resnet18", 10, "linear", str(tmp_path / "ints.safetensors"))
    broken = dict(state, **{"layer1.0.conv1.weight": state["layer1.0.conv1.weight"].clone().fill_(float("nan"))})
    torch.save(broken, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match="layer1.0.conv1.weight holds NaN or Inf values"):
        models.build_model("resnet18", 10, "linear", str(tmp_path / "nan.pth"))
    torch.save(state, tmp_path / "r18.pth")
    model, _, skipped = models.build_model("resnet18", 10, "linear", str(tmp_path / "r18.pth"))
    assert skipped == ["fc.bias", "fc.weight"]  # its own ImageNet head: replaced, counted


def test_the_cli_offers_exactly_the_schedules_the_loop_runs():
    """One tuple, in a module that imports no framework (so ``elta --help`` stays fast),
    and every schedule in it runs."""
    from elta_core import training_options
    from elta_core.app import config

    assert config.LR_SCHEDULES is training_options.LR_SCHEDULES
    for schedule in config.LR_SCHEDULES:
        assert training_options.lr_factor(schedule, 3)(0) == 1.0


def test_the_default_recipe_weighs_flsa_0_3_and_mixes_one_pair_and_a_flag_overrides_it():
    from elta_core.app.config import train_settings

    common = ["--labels", "x.csv", "--format", "ava"]
    default = recipe.resolve(train_settings(common), has_distributions=True)
    assert (default.flsa, default.num_pairs) == (0.3, 1)  # docs/design.md, "Defaults chosen by measurement"
    assert recipe.resolve(train_settings([*common, "--flsa", "0"]), True).flsa == 0.0  # off stays off
    assert recipe.resolve(train_settings([*common, "--recipe", "paper"]), True).flsa == 1.0
