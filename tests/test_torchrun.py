"""``elta train``, ``elta evaluate`` and ``elta pseudo-label`` under ``torchrun`` (2 CPU
processes, gloo): the result equals one process with the same global batch, rank 0
writes the files, ``--resume`` after a kill continues exactly, and distributed
pseudo-labelling selects what one process selects."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("timm")

from elta_core.data.synthetic import export, generate  # noqa: E402

pytestmark = pytest.mark.slow
# GroupNorm, no dropout: with the same global batch, one process and two compute the same step.
MODEL = ["--backbone", "timm/test_efficientnet_gn", "--image-size", "32", "--quiet", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    export(generate(75, 36, seed=7), folder)  # 75: the pool and the splits do not divide by 2
    return folder


def _labels(folder):
    return ["--labels", str(folder / "labels.csv"), "--format", "ava", "--images", str(folder / "images")]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _elta(*args, processes=1, cwd=None, wait=True):
    if processes == 1:
        command = [sys.executable, "-m", "elta_core", *map(str, args)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "elta_core", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _assert_same_table(a: Path, b: Path, tolerance: float = 1e-5) -> None:
    """Two CSV files with the same rows and columns: text fields equal, numbers equal within
    ``tolerance``. One process and two batch the forwards in other shapes, and float32 sums
    in another order may differ in their last bits on another CPU."""
    rows_a, rows_b = (list(csv.reader(path.read_text().splitlines())) for path in (a, b))
    assert len(rows_a) == len(rows_b) > 1, (len(rows_a), len(rows_b))
    assert rows_a[0] == rows_b[0], "the same columns"
    for row_a, row_b in zip(rows_a[1:], rows_b[1:], strict=True):
        assert len(row_a) == len(row_b), (row_a, row_b)
        for column, x, y in zip(rows_a[0], row_a, row_b):
            try:
                x_number, y_number = float(x), float(y)
            except ValueError:
                assert x == y, (column, row_a, row_b)
            else:
                assert x_number == pytest.approx(y_number, rel=tolerance, abs=tolerance), (column, row_a, row_b)


def test_the_table_comparison_tolerates_last_bits_only(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    a.write_text("image,score\nx.jpg,0.215798\n")
    b.write_text("image,score\nx.jpg,0.215797\n")  # the case seen on another CPU
    c.write_text("image,score\nx.jpg,0.2159\n")
    _assert_same_table(a, b)
    with pytest.raises(AssertionError):
        _assert_same_table(a, c)


def _max_difference(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_processes_equal_one_with_the_same_global_batch(data, tmp_path):
    common = ["train", *_labels(data), *MODEL, "--epochs", "1", "--no-tfa", "--flsa", "1"]
    _elta(*common, "--batch-size", "16", "--out", tmp_path / "one")
    printed = _elta(*common, "--batch-size", "8", "--out", tmp_path / "two", processes=2)
    assert printed.count("test metrics of") == 1  # rank 0 alone prints and writes
    from elta_core.app.models import build_model

    torch.manual_seed(0)  # what elta train starts from (--seed 0)
    initial = build_model("timm/test_efficientnet_gn", 10, "linear")[0].state_dict()
    one_weights, two_weights = _weights(tmp_path / "one" / "checkpoint.pt"), _weights(tmp_path / "two" / "checkpoint.pt")
    # float32 sums in another order, through Adam (which scales tiny gradients up): within 5 % of the update
    assert _max_difference(one_weights, two_weights) < 0.05 * _max_difference(one_weights, initial)
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["srcc"] == pytest.approx(one["srcc"], abs=1e-4) and two["num_images"] == one["num_images"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        ["checkpoint.pt", "manifest.json", "metrics.csv", "metrics.json", "predictions.csv", "predictions.png",
         "split.csv"]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["config"]["world_size"] == 2 and manifest["config"]["flsa_scope"] == "global"
    # the epoch's loss is the mean over both ranks' steps, as one process reports it
    one_loss, two_loss = (float((tmp_path / r / "metrics.csv").read_text().splitlines()[1].split(",")[1])
                          for r in ("one", "two"))
    assert two_loss == pytest.approx(one_loss, rel=1e-4)

    # another world size is another run: refused on --resume, by name
    done = subprocess.run([sys.executable, "-m", "elta_core", *map(str, common), "--batch-size", "8", "--out",
                           tmp_path / "two", "--resume"], env=_env(), capture_output=True, text=True)
    assert done.returncode == 2 and "world_size: 2 -> 1" in done.stderr


def _checkpoint_epoch(out: Path) -> int:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        if "checkpoint" not in manifest["stages"]:
            return 0
        return int(torch.load(out / "checkpoint.pt", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - the files are being written
        return 0


def test_resume_after_a_kill_under_torchrun_continues_exactly(data, tmp_path):
    common = ["train", *_labels(data), *MODEL, "--epochs", "3", "--batch-size", "8", "--num-pairs", "2"]
    _elta(*common, "--out", tmp_path / "straight", processes=2)

    run = _elta(*common, "--out", tmp_path / "killed", processes=2, wait=False)
    deadline = time.time() + 300
    while _checkpoint_epoch(tmp_path / "killed") < 1 and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # torchrun and both workers, mid-run
    run.wait()
    assert 1 <= _checkpoint_epoch(tmp_path / "killed") < 3, "the kill came too late to test anything"

    printed = _elta(*common, "--out", tmp_path / "killed", "--resume", processes=2)
    assert "resuming from" in printed
    assert _max_difference(_weights(tmp_path / "straight" / "checkpoint.pt"),
                           _weights(tmp_path / "killed" / "checkpoint.pt")) == 0.0


def test_apds_and_pseudo_labelling_on_two_ranks_select_what_one_selects(data, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(33):  # an odd pool: the ranks' blocks differ in size
        (pool / f"{k}.jpg").write_bytes((data / "images" / f"{k}.jpg").read_bytes())
    train = ["train", *_labels(data), *MODEL, "--epochs", "1", "--batch-size", "8", "--apds", "--unlabelled", pool,
             "--min-selected", "1", "--round2-epochs", "1"]
    printed = _elta(*train, "--out", tmp_path / "run", processes=2)
    assert printed.count("APDS: beta*") == 1
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["round"] == 2

    label = ["pseudo-label", "--checkpoint", checkpoint, "--calibration", data / "labels.csv", "--format", "ava",
             "--images", data / "images", "--unlabelled", pool, "--min-selected", "1", "--quiet", "--batch-size", "4"]
    _elta(*label, "--out", tmp_path / "one")
    _elta(*label, "--out", tmp_path / "two", processes=2)
    _assert_same_table(tmp_path / "one" / "pseudo_labels.csv", tmp_path / "two" / "pseudo_labels.csv")
    grid_one, grid_two = (json.loads((tmp_path / run / "grid.json").read_text()) for run in ("one", "two"))
    assert (grid_one["beta"], grid_one["threshold"]) == (grid_two["beta"], grid_two["threshold"])
    for cell_one, cell_two in zip(grid_one["table"], grid_two["table"], strict=True):
        assert cell_one["num_selected"] == cell_two["num_selected"]  # the same samples in every cell
        if cell_one["num_selected"] == 0:  # an empty cell has no error (None), in both
            assert cell_one["mae"] is None and cell_two["mae"] is None
        else:
            assert cell_one["mae"] == pytest.approx(cell_two["mae"], rel=1e-5)  # batched in other blocks

    evaluate = ["evaluate", "--checkpoint", checkpoint, *_labels(data), "--quiet", "--batch-size", "4"]
    _elta(*evaluate, "--out", tmp_path / "eval1")
    _elta(*evaluate, "--out", tmp_path / "eval2", processes=2)
    _assert_same_table(tmp_path / "eval1" / "predictions.csv", tmp_path / "eval2" / "predictions.csv")


# Runs an elta command as torchrun's worker with the garbage collector off (so that nothing
# but the command itself frees the DDP module) and records, when the interpreter starts
# to shut down, which threads the process still has.
THREADS_AT_EXIT = '''
import atexit, gc, os, sys
gc.disable()
from elta_core.app.cli import main

def record():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{task}/comm").read().strip())
        except OSError:
            pass
    with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".txt"), "w") as out:
        out.write("\\n".join(sorted(names)))

atexit.register(record)  # registered last, so it runs first: right after the command returned
sys.exit(main(sys.argv[2:]))
'''


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the threads from /proc")
def test_no_rank_reaches_the_interpreters_teardown_with_the_process_groups_threads(data, tmp_path):
    """A rank whose process group outlived the command (held by the DDP module in a
    reference cycle) tore gloo's threads down with the interpreter, and now and then
    aborted there (``terminate called without an active exception``, exit -6). The
    command must leave with the group and its threads gone, whether or not the garbage
    collector happened to run."""
    script, threads = tmp_path / "worker.py", tmp_path / "threads"
    script.write_text(THREADS_AT_EXIT)
    threads.mkdir()
    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(9):
        (pool / f"{k}.jpg").write_bytes((data / "images" / f"{k}.jpg").read_bytes())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
               str(threads), "train", *_labels(data), *MODEL, "--epochs", "1", "--batch-size", "8", "--apds",
               "--unlabelled", str(pool), "--min-selected", "1", "--round2-epochs", "1", "--out", str(tmp_path / "run")]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        names = (threads / f"rank{rank}.txt").read_text().split()
        assert not [name for name in names if "gloo" in name], (rank, names)


def test_too_few_training_images_for_the_processes_is_named_on_every_rank(data, tmp_path):
    """3 training images for 2 processes (2 each needed): each rank says why it stops, so a
    cluster's per-rank logs all carry the cause."""
    names = sorted(p.name for p in (data / "images").glob("*.jpg"))
    labels = tmp_path / "few.csv"
    labels.write_text("image,score,split\n" + "".join(f"{name},{3 + k % 5},{'train' if k < 3 else 'test'}\n"
                                                       for k, name in enumerate(names[:7])))
    run = _elta("train", "--labels", labels, "--format", "csv", "--split-column", "split", "--images",
                data / "images", *MODEL, "--epochs", "1", "--out", tmp_path / "run", processes=2, wait=False)
    output, _ = run.communicate(timeout=240)
    assert run.returncode != 0
    cause = "labels: 3 training image(s) after the split; at least 4 are needed to train (2 per process, 2 processes)"
    assert output.count(cause) == 2, output[-3000:]
