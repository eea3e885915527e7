"""``elta export``: a checkpoint becomes a model that loads without elta_core (a
subprocess that cannot import it) and predicts what the checkpoint predicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("safetensors")

from elta_core.app.cli import main  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402

# Loads the export with elta_core unimportable, and prints its outputs on the given images.
WITHOUT_ELTA = """
import json, sys
class NoElta:
    def find_spec(self, name, path=None, target=None):
        if name == "elta_core" or name.startswith("elta_core."):
            raise ImportError("elta_core must not be needed to load an export")
sys.meta_path.insert(0, NoElta())
import torch
folder, images = sys.argv[1], sys.argv[2:]
sys.path.insert(0, folder)
from load_elta_model import load, open_image
model, transform, spec = load(folder)
with torch.no_grad():
    out = model(torch.stack([transform(open_image(p)) for p in images]))
print(json.dumps({"outputs": out.tolist(), "spec": spec, "elta": [m for m in sys.modules if m.startswith("elta_core")]}))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export_data")
    export(generate(40, 32, seed=9), folder)
    return folder


@pytest.mark.parametrize("backbone,head", [("resnet18", "linear"), ("timm/test_resnet", "emd-mlp"),
                                           ("resnet18", "sigmoid")])
def test_an_export_loads_without_elta_core_and_predicts_what_the_checkpoint_does(data, tmp_path, backbone, head):
    if backbone.startswith("timm/"):
        pytest.importorskip("timm")
    assert main(["train", "--labels", str(data / "labels.csv"), "--format", "ava", "--images", str(data / "images"),
                 "--backbone", backbone, "--head", head, "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                 "--val-fraction", "0.25", "--workers", "0", "--threads", "1", "--quiet", "--out",
                 str(tmp_path / "run")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "x")]) == 0
    images = sorted(str(p) for p in (data / "images").glob("*.jpg"))[:6]
    done = subprocess.run([sys.executable, "-c", WITHOUT_ELTA, str(tmp_path / "x"), *images], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout)
    assert loaded["elta"] == []

    from elta_core.adapters.torch.data import open_image
    from elta_core.app.predict import load_model

    scorer, transform = load_model(tmp_path / "run" / "checkpoint.pt", "cpu")
    with torch.no_grad():
        expected = scorer.network(torch.stack([transform(open_image(p)) for p in images]))
    assert torch.allclose(torch.tensor(loaded["outputs"]), expected, atol=1e-5, rtol=0)
    spec = loaded["spec"]
    assert spec["backbone"] == backbone and spec["head"]["type"] == head and spec["num_bins"] == 10
    assert spec["bin_values"] == list(range(1, 11)) and spec["scale"] == [1.0, 10.0]
    # elta predict on the same checkpoint: a score head has no distribution to write
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--images", str(data / "images"),
                 "--out", str(tmp_path / "scores.csv"), "--workers", "0", "--quiet"]) == 0
    header = (tmp_path / "scores.csv").read_text().splitlines()[0].split(",")
    assert header == (["image", "score"] if head == "sigmoid" else ["image", "score", "std"] +
                      [f"p_{v}" for v in range(1, 11)])


def test_a_torch_export_program_runs_without_the_models_code(data, tmp_path):
    assert main(["train", "--labels", str(data / "labels.csv"), "--format", "ava", "--images", str(data / "images"),
                 "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--val-fraction", "0.25", "--workers",
                 "0", "--threads", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "x"),
                 "--torch-export"]) == 0
    from elta_core.app.predict import load_model

    scorer, _ = load_model(tmp_path / "run" / "checkpoint.pt", "cpu")
    program = torch.export.load(str(tmp_path / "x" / "model.pt2"))
    for batch in (1, 3):  # any batch size
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), scorer.network(x), atol=1e-5, rtol=0)


def test_export_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_a_run_of_the_demo_model_trains_and_scores_but_is_not_exported(data, tmp_path, capsys):
    """``elta train --backbone elta/small-cnn`` trains the demo's model from image files;
    the exported loader could not build it without elta_core, so export refuses by name,
    and load_model scores with it."""
    from elta_core.app.predict import load_model

    assert main(["train", "--labels", str(data / "labels.csv"), "--format", "ava", "--images", str(data / "images"),
                 "--backbone", "elta/small-cnn", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
                 "--val-fraction", "0.25", "--workers", "0", "--threads", "1", "--quiet", "--out",
                 str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "elta/small-cnn is elta_core's own" in capsys.readouterr().err and not (tmp_path / "x").exists()
    scorer, transform = load_model(tmp_path / "run" / "checkpoint.pt")
    assert scorer is not None and transform is not None
