"""``elta train --pretrained``: timm weights through the Hugging Face hub's cache, torchvision
weights through their enums, offline against caches the tests write (no network here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from elta_core.app.models import build_model  # noqa: E402

TIMM_MODEL = "test_resnet.r160_in1k"  # one of timm's test models: 0.3 M parameters


def write_hub_cache(home: Path, name: str) -> dict[str, torch.Tensor]:
    """A Hugging Face hub cache under ``home`` holding ``timm/<name>``'s weights, as a
    download leaves it (``models--timm--NAME/snapshots/REV/model.safetensors`` and
    ``refs/main``); the weights are a random initialisation, so that they are recognisable."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(11)
    state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    repository = home / "hub" / f"models--timm--{name}"
    (repository / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(state, str(repository / "snapshots" / "0123abcd" / "model.safetensors"))
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("0123abcd")
    return state


SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file
    from elta_core.app.cli import main
    from elta_core.app.run.model import RunConfig

    cached, data, out = sys.argv[1:4]
    # the model elta train builds starts from the cached tensors, all but the new head
    model, head, new = RunConfig("timm/{name}", 10, list(range(1, 11)), [1.0, 10.0], 32, "").build(pretrained="default")
    own, file = model.state_dict(), load_file(cached)
    loaded = [k for k in file if k in own and torch.equal(own[k], file[k])]
    print(json.dumps({{"loaded": loaded, "new": new, "head": head}}))
    sys.exit(main(["train", "--labels", data + "/labels.csv", "--format", "ava", "--images", data + "/images",
                   "--backbone", "timm/{name}", "--pretrained", "--image-size", "32", "--batch-size", "8",
                   "--epochs", "1", "--workers", "0", "--threads", "1", "--quiet", "--out", out]))
""")


def _offline(home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(home / "torch")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from elta_core.data.synthetic import export, generate

    folder = tmp_path_factory.mktemp("pretrained_data")
    export(generate(40, 32, seed=4), folder)
    return folder


def test_a_timm_model_trains_from_the_weights_in_the_hub_cache_offline(data, tmp_path):
    pytest.importorskip("timm")
    state = write_hub_cache(tmp_path / "hf", TIMM_MODEL)
    cached = next((tmp_path / "hf" / "hub").rglob("model.safetensors"))
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(name=TIMM_MODEL), str(cached), str(data),
                           str(tmp_path / "run")], env=_offline(tmp_path / "hf"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout.splitlines()[0])
    head = built["head"]
    assert set(built["loaded"]) == {k for k in state if not k.startswith(head + ".")}  # every backbone tensor
    assert built["new"] and all(k.startswith(head + ".") for k in built["new"])
    recorded = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert recorded["pretrained"] == "default"
    assert recorded["lr"] == 1e-4 and recorded["lr_schedule"] == "constant"  # fine-tuning's defaults, as --weights


def test_weights_neither_cached_nor_downloadable_stop_the_run_before_it_starts(data, tmp_path):
    pytest.importorskip("timm")
    (tmp_path / "hf").mkdir()
    done = subprocess.run([sys.executable, "-m", "elta_core.app.cli", "train", "--labels", str(data / "labels.csv"),
                           "--format", "ava", "--images", str(data / "images"), "--backbone", "timm/test_vit.r160_in1k",
                           "--pretrained", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")],
                          env=_offline(tmp_path / "hf"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    error = done.stderr.strip()
    assert len(error.splitlines()) == 1, error
    for named in ("timm/test_vit.r160_in1k", str(tmp_path / "hf" / "hub"), "HF_HUB_OFFLINE", "--weights"):
        assert named in error, (named, error)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_unknown_tag_lists_the_published_ones():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=r"pretrained: timm has no published weights 'test_resnet.nope' \(tags of "
                                         r"test_resnet: r160_in1k\)"):
        build_model("timm/test_resnet", 10, pretrained="nope")


def test_a_torchvision_model_starts_from_its_cached_weights_and_names_the_cache_when_they_are_missing(
        tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(ValueError, match=r"pretrained: the weights resnet18:IMAGENET1K_V1 are not in the cache .*"
                                         r"torch.hub.checkpoints \(HF_HUB_OFFLINE is set\).*--weights"):
        build_model("resnet18", 10, pretrained="default")
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(weights.url))
    model, head, new = build_model("resnet18", 10, pretrained="IMAGENET1K_V1")
    own = model.state_dict()
    assert head == "fc" and new == ["fc.bias", "fc.weight"] and own["fc.weight"].shape == (10, 512)
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    with pytest.raises(ValueError, match="pretrained: resnet18 has no weights 'IMAGENET9' .*IMAGENET1K_V1"):
        build_model("resnet18", 10, pretrained="IMAGENET9")


def test_pretrained_and_weights_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pretrained: give --pretrained or --weights, not both"):
        build_model("resnet18", 10, weights=str(tmp_path / "w.pth"), pretrained="default")
