"""The real-image benchmark's data (benchmarks/real_images.py): the bundled handwritten
digits as AVA-format vote counts, in seeded, disjoint, long-tailed splits."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from benchmarks import real_images  # noqa: E402
from elta_core.data import load_labels  # noqa: E402


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return folder, real_images.write_dataset(folder, seed=0)


def test_splits_are_disjoint_long_tailed_and_in_the_ava_format(written):
    folder, paths = written
    tables = {split: load_labels(path, "ava", image_root=folder / "images") for split, path in paths.items()}
    ids = {split: set(table.images) for split, table in tables.items()}
    for a in ids:
        for b in ids:
            assert a == b or not ids[a] & ids[b], f"{a} and {b} share images"
    for split, sizes in real_images.SPLITS.items():
        table = tables[split]
        assert len(table) == sum(sizes)
        # each image's votes centre on its digit + 1: the rounded mean score recovers the level counts
        levels = np.bincount(np.clip(np.rint(table.scores), 1, 10).astype(int) - 1, minlength=10)
        assert abs(levels - np.asarray(sizes)).sum() <= 0.2 * sum(sizes)
    train = np.asarray(real_images.TRAIN)
    assert train.min() == 6 and train.max() / train.min() > 15, "long-tailed: the rarest scores have 6 images"
    assert len(set(real_images.TEST)) == 1, "tail-heavy test split: every score equally often"


def test_the_data_is_seeded(written, tmp_path):
    folder, paths = written
    again = real_images.write_dataset(tmp_path, seed=0)
    for split in paths:
        assert again[split].read_text() == paths[split].read_text()
    other = real_images.write_dataset(tmp_path / "other", seed=1)
    assert other["train"].read_text() != paths["train"].read_text()


def test_a_setting_that_the_methods_set_is_refused_not_silently_overridden(tmp_path):
    with pytest.raises(ValueError, match="--flsa are set by elta compare per method"):
        real_images.main(["--out", str(tmp_path), "--", "--flsa", "10"])
    assert not (tmp_path / "data").exists()


def test_the_validation_table_evaluates_a_changed_checkpoint_again(tmp_path, monkeypatch):
    """A run resumed for more epochs has a new checkpoint: its cached validation metrics
    described the old one (they were reused before, keyed by the file's existence alone)."""
    import json

    from elta_core.app import cli

    calls = []

    def evaluate(argv):
        out = argv[argv.index("--out") + 1]
        calls.append(out)
        metrics = {key: float(len(calls)) for key in ("plcc", "mae_low", "mae_high", "mae")}
        (tmp_path / out).mkdir(parents=True, exist_ok=True)
        (tmp_path / out / "evaluation.json").write_text(json.dumps(metrics))
        return 0

    monkeypatch.setattr(cli, "main", evaluate)
    for seed in (0, 1):
        run = tmp_path / "compare" / "runs" / "elta" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "checkpoint.pt").write_bytes(b"epoch 20")
    real_images.validation_table(tmp_path, ["elta"], [0, 1])
    real_images.validation_table(tmp_path, ["elta"], [0, 1])
    assert len(calls) == 2, "an unchanged checkpoint is not evaluated twice"
    (tmp_path / "compare" / "runs" / "elta" / "seed1" / "checkpoint.pt").write_bytes(b"epoch 40")
    table = real_images.validation_table(tmp_path, ["elta"], [0, 1])
    assert len(calls) == 3 and calls[-1].endswith("seed1/validation")
    assert "| elta | 2.000 ± 1.414 |" in table, "seed 1's new metrics (3), not its old ones (2)"
