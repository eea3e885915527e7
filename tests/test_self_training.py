import json

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import TensorDataset  # noqa: E402

from elta_core.adapters.torch import ELTAWrapper, PseudoLabelledDataset, SelfTraining  # noqa: E402
from elta_core.adapters.torch.self_training import STAGES, atomic_save  # noqa: E402
from tests.torch_models import TwoLayer, distributions  # noqa: E402


def _datasets():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=generator)
    y = distributions(200, seed=1)
    labelled = TensorDataset(x[:40], y[:40])
    calibration = TensorDataset(x[40:100], y[40:100])
    unlabelled = TensorDataset(x[100:])
    return labelled, calibration, unlabelled


def _self_training(workdir, calls):
    torch.manual_seed(0)
    wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0)

    def train(wrapper, labelled_loader, pseudo_loader, round_index):
        calls.append(round_index)
        optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.5)
        for x, y in labelled_loader:
            loss = wrapper(x, y).loss
            if pseudo_loader is not None:
                xu, yu = next(iter(pseudo_loader))
                loss = loss + wrapper.unlabelled_loss(xu, yu)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    # Low thresholds: an untrained toy model is rarely confident.
    return SelfTraining(
        wrapper, workdir, train=train, thresholds=(0.12, 0.15, 0.2), min_selected=5,
        batch_size=16, loader_kwargs={"generator": torch.Generator().manual_seed(0)}, progress=False,
    )


def test_resume_after_round1_gives_the_same_selection(tmp_path):
    straight_calls, resumed_calls = [], []
    straight = _self_training(tmp_path / "straight", straight_calls).run(*_datasets())
    assert straight_calls == [1, 2]
    assert all((tmp_path / "straight" / name).exists() for name in ("round1.pt", "grid.json", "grid.md", "selection.pt", "round2.pt"))

    interrupted = _self_training(tmp_path / "resumed", resumed_calls)
    interrupted.run(*_datasets(), stop_after="round1")
    assert resumed_calls == [1] and interrupted.done("round1") and not interrupted.done("calibration")

    resumed = _self_training(tmp_path / "resumed", resumed_calls).run(*_datasets())
    assert resumed_calls == [1, 2], "round 1 was loaded, not retrained"
    assert resumed["grid"] == straight["grid"]
    a = torch.load(tmp_path / "straight" / "selection.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "selection.pt", weights_only=True)
    torch.testing.assert_close(a["indices"], b["indices"])
    torch.testing.assert_close(a["labels"], b["labels"])
    assert 0 < resumed["num_kept"] <= 40, "capped at the labelled set's size"

    # A finished run recomputes nothing.
    again_calls = []
    _self_training(tmp_path / "resumed", again_calls).run(*_datasets())
    assert again_calls == []


def test_stages_are_saved_atomically(tmp_path, monkeypatch):
    target = tmp_path / "grid.json"
    atomic_save({"a": 1}, target)

    def broken_dumps(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError):
        atomic_save({"a": 2}, target)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}, "the old file is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.json"], "no temporary left behind"


def test_cap_keeps_the_most_confident(tmp_path):
    st = _self_training(tmp_path, [])
    logits = torch.zeros(6, 10)
    logits[:, 5] = torch.tensor([1.0, 6.0, 2.0, 8.0, 3.0, 7.0])
    selection = st._select(logits, 1.0, 0.1, cap=3)
    assert selection["indices"].tolist() == [1, 3, 5]
    assert int(selection["num_selected"]) == 6


def test_pseudo_labelled_dataset_and_stage_names(tmp_path):
    base = TensorDataset(torch.arange(10.0)[:, None])
    data = PseudoLabelledDataset(base, torch.tensor([2, 7]), torch.eye(2))
    assert len(data) == 2 and data[1][0].item() == 7.0
    with pytest.raises(ValueError, match="labels: expected 2 pseudo-labels"):
        PseudoLabelledDataset(base, [1, 2], torch.eye(3))
    with pytest.raises(ValueError, match="stop_after: expected one of"):
        _self_training(tmp_path, []).run(*_datasets(), stop_after="nope")
    assert STAGES[0] == "round1" and STAGES[-1] == "round2"
