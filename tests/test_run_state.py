"""Run directories: fault injection (kill, truncate, flip bytes, replace, change the
configuration) against SelfTraining; each must give a named error or a correct
recomputation, never stale or damaged state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import TensorDataset  # noqa: E402

from elta_core.adapters.torch import ELTAWrapper, SelfTraining  # noqa: E402
from elta_core.io import TEMPORARY_SUFFIX  # noqa: E402
from elta_core.run_state import RunManifest, StaleStateError  # noqa: E402
from tests.torch_models import TwoLayer, distributions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGE_FILES = ["round1.pt", "calibration.pt", "unlabelled.pt", "grid.json", "selection.pt", "round2.pt"]


def _run(workdir: Path, fault: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.fault_runner", str(workdir), fault], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _final_weights(workdir: Path) -> dict:
    return torch.load(workdir / "round2.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    completed = _run(workdir)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["train:3", "train:14", "predict:3", "predict:9", "write:round1.pt",
                                   "write:unlabelled.pt", "write:selection.pt", "write:round2.pt", "write:manifest.json"])
def test_killed_run_resumes_bit_identical(uninterrupted, tmp_path, fault):
    killed = _run(tmp_path, fault)
    assert killed.returncode == -9, f"the fault {fault} did not fire: {killed.stderr[-2000:]}"
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, actual = _final_weights(uninterrupted), _final_weights(tmp_path)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after a kill at {fault}"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMPORARY_SUFFIX)], "temporary files left"


def _datasets(rows: int = 160, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=generator)
    y = distributions(rows, seed=2)
    return TensorDataset(x[:40], y[:40]), TensorDataset(x[40:80], y[40:80]), TensorDataset(x[80:])


def _trainer(workdir: Path, calls: list, width: int = 6, **options) -> SelfTraining:
    torch.manual_seed(0)

    def train(wrapper, loader, pseudo, round_index):
        calls.append(round_index)
        optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.3)
        for x, y in loader:
            optimizer.zero_grad()
            wrapper(x, y).loss.backward()
            optimizer.step()

    settings = dict(thresholds=(0.12, 0.15, 0.2), min_selected=5, batch_size=8, progress=False)
    settings.update(options)
    return SelfTraining(ELTAWrapper(TwoLayer(width=width), "fc", num_pairs=2, seed=3), workdir, train=train, **settings)


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip", "replace"])
@pytest.mark.parametrize("name", STAGE_FILES)
def test_damaged_stage_file_is_a_named_error(tmp_path, name, damage):
    _trainer(tmp_path, []).run(*_datasets())
    path = tmp_path / name
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "zero":
        path.write_bytes(b"")
    elif damage == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:])
    else:
        other = tmp_path / "other"
        _trainer(other, [], width=5).run(*_datasets())
        path.write_bytes((other / name).read_bytes())
    with pytest.raises(StaleStateError, match=f"{name}: does not match the checksum .* delete it to recompute"):
        _trainer(tmp_path, []).run(*_datasets())


def test_changed_settings_recompute_exactly_the_stages_that_depend_on_them(tmp_path):
    calls: list = []
    first = _trainer(tmp_path, calls).run(*_datasets())
    assert calls == [1, 2]
    calls.clear()
    _trainer(tmp_path, calls).run(*_datasets())
    assert calls == [], "nothing changed: nothing recomputed"

    manifest = RunManifest(tmp_path)
    before = {stage: record["sha256"] for stage, record in manifest.data["stages"].items()}
    other_betas = _trainer(tmp_path, calls, betas=(2.0, 3.0)).run(*_datasets())
    assert calls == [2], "new betas: the grid, the selection and round 2 are recomputed, round 1 is not"
    assert other_betas["grid"]["beta"] in (2.0, 3.0) and first["grid"]["beta"] not in (2.0, 3.0)
    after = RunManifest(tmp_path).data["stages"]
    assert after["round1"]["sha256"] == before["round1"] and after["calibration"]["sha256"] == before["calibration"]

    calls.clear()
    _trainer(tmp_path, calls, width=5).run(*_datasets())
    assert calls == [1, 2], "another model width: everything is recomputed"
    calls.clear()
    _trainer(tmp_path, calls, width=5).run(*_datasets(seed=9))
    assert calls == [1, 2], "another labelled set: everything is recomputed"


def test_deleting_a_stage_recomputes_it_and_everything_after(tmp_path):
    calls: list = []
    _trainer(tmp_path, calls).run(*_datasets())
    (tmp_path / "grid.json").unlink()
    calls.clear()
    _trainer(tmp_path, calls).run(*_datasets())
    assert (tmp_path / "grid.json").exists(), "the deleted stage is recomputed"
    assert calls == [], "its output is bit-identical, so the stages after it stay valid"
    (tmp_path / "calibration.pt").unlink()
    (tmp_path / "round1.pt").unlink()
    _trainer(tmp_path, calls).run(*_datasets())
    assert calls == [1], "round 1 retrained (same seed, same weights); round 2 still matches its inputs"


def test_stale_temporaries_are_removed_and_a_damaged_manifest_is_named(tmp_path):
    _trainer(tmp_path, []).run(*_datasets())
    (tmp_path / f".round2.pt.abc{TEMPORARY_SUFFIX}").write_bytes(b"half")
    _trainer(tmp_path, []).run(*_datasets())
    assert not list(tmp_path.glob(f"*{TEMPORARY_SUFFIX}"))
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(StaleStateError, match="manifest.json: damaged"):
        _trainer(tmp_path, []).run(*_datasets())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torchvision")
    from elta_core.data.synthetic import export, generate

    folder = tmp_path_factory.mktemp("images")
    return export(generate(40, 32, seed=5), folder), folder / "images"


def _run_cli(exported, out: Path, fault: str = "") -> subprocess.CompletedProcess:
    labels, images = exported
    return subprocess.run([sys.executable, "-m", "tests.fault_runner", "--cli", str(labels), str(images), str(out), fault],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted_cli(exported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    completed = _run_cli(exported, out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["train:3", "train:9", "write:checkpoint.pt", "predict:2", "write:round2.pt"])
def test_killed_elta_train_apds_resumes_bit_identical(exported, uninterrupted_cli, tmp_path, fault):
    out = tmp_path / "run"
    killed = _run_cli(exported, out, fault)
    assert killed.returncode == -9, f"the fault {fault} did not fire: {killed.stderr[-2000:]}"
    resumed = _run_cli(exported, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(uninterrupted_cli / "checkpoint.pt", weights_only=True)["model"]
    actual = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after a kill at {fault}"
    for folder in (out, out / "self_training"):
        assert not [p.name for p in folder.iterdir() if p.name.endswith(TEMPORARY_SUFFIX)], "temporary files left"
