import errno
import json
import os

import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import TensorDataset  # noqa: E402

from elta_core import apds  # noqa: E402
from elta_core.adapters.torch import ELTAWrapper, PseudoLabelledDataset, SelfTraining, fit  # noqa: E402
from elta_core.adapters.torch.checkpoints import atomic_save  # noqa: E402
from elta_core.adapters.torch.self_training import STAGES  # noqa: E402
from elta_core.io import _umask, atomic_write, atomic_write_json  # noqa: E402
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


def test_stages_are_saved_atomically(tmp_path):
    target = tmp_path / "grid.json"
    atomic_write_json(target, {"a": 1})

    def half_then_fail(stream):
        stream.write(b'{"a": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"a": 1}, "the old file is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.json"], "no temporary left behind"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask()), "the user's umask, not mkstemp's 0600"
    with pytest.raises(ValueError, match="NaN"):
        atomic_write_json(tmp_path / "nan.json", {"loss": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    atomic_save({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.ones(2))


class _DiskWithRoomFor:
    """A file object on a device that holds ``room`` bytes: then ENOSPC, as a full disk."""

    def __init__(self, stream, room):
        self._stream, self._room = stream, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "round1.pt"
    atomic_save({"w": torch.ones(2)}, target)
    real_fdopen = os.fdopen
    monkeypatch.setattr("elta_core.io.os.fdopen", lambda *a, **k: _DiskWithRoomFor(real_fdopen(*a, **k), 1000))
    with pytest.raises(OSError) as caught:
        atomic_save({"w": torch.zeros(10_000)}, target)  # torch.save turns it into "[enforce fail at ...]"
    message = str(caught.value)
    assert "\n" not in message and "enforce fail" not in message
    assert str(target) in message and "no space left on the device" in message
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2)), "the old checkpoint is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["round1.pt"], "no temporary left behind"


def test_a_checkpoint_is_hashed_as_it_is_written_and_the_hash_is_the_file_s(tmp_path):
    import hashlib

    from elta_core.adapters.torch.checkpoints import Checkpointer
    from elta_core.run_state import RunManifest, sha256_of_file

    manifest = RunManifest(tmp_path)
    state = {"model": torch.nn.Linear(64, 10).state_dict(), "epoch": 3}
    Checkpointer(tmp_path, manifest=manifest).save("checkpoint", state, "key")
    recorded = manifest.data["stages"]["checkpoint"]["sha256"]
    assert recorded == sha256_of_file(tmp_path / "checkpoint.pt")
    assert manifest.reusable("checkpoint", tmp_path / "checkpoint.pt", "key")
    digest = hashlib.sha256()

    def seeking(stream):  # a writer that goes back would make the in-order hash another file's
        stream.write(b"abc")
        stream.seek(0)

    with pytest.raises(OSError, match="written in order only"):
        atomic_write(tmp_path / "x.bin", seeking, digest=digest)
    assert not (tmp_path / "x.bin").exists()


def test_cap_keeps_the_most_confident():
    logits = torch.zeros(6, 10)
    logits[:, 5] = torch.tensor([1.0, 6.0, 2.0, 8.0, 3.0, 7.0])
    chosen = apds.select(logits, 1.0, 0.1)
    kept = apds.keep_most_confident(logits, chosen, 1.0, 3)
    assert kept.indices.tolist() == [1, 3, 5] and len(chosen.indices) == 6


@pytest.mark.parametrize("round2", ["concat", "separate"])
def test_round2_modes_reach_the_training_function(tmp_path, round2):
    seen = {}

    def train(wrapper, labelled_loader, pseudo_loader, round_index):
        if round_index == 2:
            seen["labelled"] = len(labelled_loader.dataset)
            seen["pseudo"] = None if pseudo_loader is None else len(pseudo_loader.dataset)

    torch.manual_seed(0)
    trainer = SelfTraining(ELTAWrapper(TwoLayer(), "fc", seed=0), tmp_path, train=train, round2=round2,
                           thresholds=(0.12, 0.15, 0.2), min_selected=5, max_pseudo_labels=None, progress=False)
    summary = trainer.run(*_datasets())
    kept = summary["num_kept"]
    assert kept == summary["num_selected"] > 0, "no cap"
    if round2 == "concat":
        assert seen == {"labelled": 40 + kept, "pseudo": None}
    else:
        assert seen == {"labelled": 40, "pseudo": kept}


def test_concat_round2_trains_tfa_and_flsa_on_pseudo_labels_with_score_labels(tmp_path):
    labelled, calibration, unlabelled = _datasets()
    scores = TensorDataset(labelled.tensors[0], labelled.tensors[1] @ torch.arange(1, 11.0))
    torch.manual_seed(0)
    trainer = SelfTraining(ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0), tmp_path, epochs=1,
                           thresholds=(0.12, 0.15, 0.2), min_selected=5, progress=False)
    summary = trainer.run(scores, calibration, unlabelled)
    assert summary["num_kept"] > 0 and (tmp_path / "round2.pt").exists()


def test_bad_self_training_options(tmp_path):
    wrapper = ELTAWrapper(TwoLayer(), "fc")
    with pytest.raises(ValueError, match="round2: expected 'concat' or 'separate'"):
        SelfTraining(wrapper, tmp_path, round2="mixed")
    with pytest.raises(ValueError, match="max_pseudo_labels"):
        SelfTraining(wrapper, tmp_path, max_pseudo_labels=-1)
    with pytest.raises(ValueError, match="batch_size"):
        SelfTraining(wrapper, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="pseudo_loader: expected pseudo-labelled batches"):
        fit(wrapper, [(torch.randn(4, 4), distributions(4))], torch.optim.SGD(wrapper.parameters(), 0.1),
            pseudo_loader=[], progress=False)
    with pytest.raises(ValueError, match="loader: expected \\(x, y\\) batches"):
        fit(wrapper, [torch.randn(4, 4)], torch.optim.SGD(wrapper.parameters(), 0.1), progress=False)


def test_pseudo_labelled_dataset_and_stage_names(tmp_path):
    base = TensorDataset(torch.arange(10.0)[:, None])
    data = PseudoLabelledDataset(base, torch.tensor([2, 7]), torch.eye(2))
    assert len(data) == 2 and data[1][0].item() == 7.0
    with pytest.raises(ValueError, match="labels: expected 2 pseudo-labels"):
        PseudoLabelledDataset(base, [1, 2], torch.eye(3))
    with pytest.raises(ValueError, match="stop_after: expected one of"):
        _self_training(tmp_path, []).run(*_datasets(), stop_after="nope")
    assert STAGES[0] == "round1" and STAGES[-1] == "round2"


def test_progress_bars_do_not_change_the_result():
    """tqdm.auto's asyncio class calls iter() on the loader in its constructor, which drew
    one extra value from the loader's seeded generator: results depended on the bar."""
    results = []
    for progress in (False, True):
        torch.manual_seed(0)
        wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=0)
        labelled, _, _ = _datasets()
        loader = torch.utils.data.DataLoader(labelled, batch_size=8, shuffle=True,
                                             generator=torch.Generator().manual_seed(5))
        fit(wrapper, loader, torch.optim.SGD(wrapper.parameters(), lr=0.1), epochs=2, progress=progress)
        results.append([p.detach().clone() for p in wrapper.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_a_pool_killed_mid_prediction_resumes_at_its_chunk(tmp_path, monkeypatch):
    from elta_core.adapters.torch import self_training as module

    straight = _self_training(tmp_path / "straight", [])
    straight.prediction_chunk = 25
    expected = straight.run(*_datasets())

    real, predicted = module.predict_dataset, []

    def crash_in_third_pool_chunk(wrapper, dataset, **kwargs):
        if kwargs["desc"].startswith("predict unlabelled"):
            predicted.append(dataset.indices.start)
            if len(predicted) == 3:
                raise KeyboardInterrupt  # a kill while predicting rows 50..74 of the pool
        return real(wrapper, dataset, **kwargs)

    monkeypatch.setattr(module, "predict_dataset", crash_in_third_pool_chunk)
    trainer = _self_training(tmp_path / "resumed", [])
    trainer.prediction_chunk = 25
    with pytest.raises(KeyboardInterrupt):
        trainer.run(*_datasets())
    assert sorted(p.name for p in (tmp_path / "resumed" / "chunks").iterdir()) == ["unlabelled.00000.pt", "unlabelled.00001.pt"]

    predicted.clear()
    resumed = _self_training(tmp_path / "resumed", [])
    resumed.prediction_chunk = 25
    result = resumed.run(*_datasets())
    assert predicted == [50, 75], "the two saved chunks were not predicted again"
    assert result["grid"] == expected["grid"]
    a = torch.load(tmp_path / "straight" / "unlabelled.pt", weights_only=True)["logits"]
    b = torch.load(tmp_path / "resumed" / "unlabelled.pt", weights_only=True)["logits"]
    assert torch.equal(a, b) and len(a) == 100
    assert not list((tmp_path / "resumed" / "chunks").iterdir()), "chunks give way to the stage's file"


@pytest.mark.parametrize("size,batch_size", [(17, 8), (9, 4), (33, 16)])
def test_a_last_batch_of_one_image_is_dropped_so_batchnorm_trains(size, batch_size):
    """k * batch + 1 images left one image in the last batch: BatchNorm raised "Expected
    more than 1 value per channel when training"."""
    from elta_core.adapters.torch.loop import training_loader

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 10))
    data = torch.utils.data.TensorDataset(torch.randn(size, 4), torch.softmax(torch.randn(size, 10), 1))
    wrapper = ELTAWrapper(model, "3", tfa=False, seed=0)
    for loader in (training_loader(data, batch_size, drop_last=False), training_loader(data, batch_size, seed=0),
                   training_loader(data, batch_size)):
        assert all(len(x) > 1 for x, _ in loader)
        fit(wrapper, loader, torch.optim.SGD(wrapper.parameters(), lr=0.01), epochs=1, progress=False)
    kept = training_loader(torch.utils.data.TensorDataset(torch.randn(size + 1, 4)), batch_size, drop_last=False)
    assert sum(len(x) for (x,) in kept) == size + 1  # a last batch of 2 is kept when asked


def test_a_saved_stage_restores_each_rank_s_own_generators(tmp_path, monkeypatch):
    """Under DDP each rank's generators differ; a resumed stage gives every rank its own
    state back (a stage kept rank 0's alone, which rank 1 then took as its own). A stage
    saved with rank 0's state alone, as before, still restores that."""
    from elta_core.adapters.torch import checkpoints, rng

    generator = torch.Generator().manual_seed(7)
    rank0_state = generator.get_state()
    rank1 = rng.snapshot([torch.Generator().manual_seed(100)])
    monkeypatch.setattr(checkpoints, "gather_objects", lambda own: [own, rank1])
    monkeypatch.setattr(checkpoints, "world_size", lambda: 2)
    monkeypatch.setattr(checkpoints, "rank", lambda: 0)  # rank 0 computes and writes the stage
    checkpoints.Checkpointer(tmp_path, lambda: [generator]).cached(
        "round1", "key", lambda: {"value": torch.ones(1)}, lambda record: record)

    monkeypatch.setattr(checkpoints, "rank", lambda: 1)  # rank 1 of a resumed run reads it
    generator = torch.Generator().manual_seed(8)
    record = checkpoints.Checkpointer(tmp_path, lambda: [generator]).cached(
        "round1", "key", lambda: pytest.fail("a current stage is not recomputed"), lambda record: record)
    assert torch.equal(record["value"], torch.ones(1))
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(100).get_state()), \
        "rank 1 took rank 0's generator state"

    old_form = {k: v for k, v in torch.load(tmp_path / "round1.pt", weights_only=True).items() if k != "rng_ranks"}
    checkpoints.Checkpointer(tmp_path).save("round1", old_form, "key")
    checkpoints.Checkpointer(tmp_path, lambda: [generator]).cached("round1", "key", pytest.fail, lambda r: r)
    assert torch.equal(generator.get_state(), rank0_state)
