"""The training data path and ``elta train``'s throughput, each against its baseline in the
same run (CPU; the GPU counterpart is ``benchmarks/gpu_train_throughput.sh``).

- The loader alone, one pass over ``ELTA_BENCH_JPEGS`` (default 2,000) real-size JPEGs
  (1024 x 768, about 150 kB each, generated): PIL (the library's decoder), torchvision's
  ``decode_jpeg``, PIL with JPEG draft decoding, and PIL on the folder that
  ``elta prepare`` wrote (300 x 300). The recipe's train transform (resize 300, random
  crop 256, flip), batch 32, 2 workers.
- ``elta train`` (TFA + FLSA, checkpoint every epoch) against a plain torchvision training
  loop with the same model, data, batch size, workers and optimizer (the same EMD loss):
  images per second of the second epoch, resnet18 at 64 px on the prepared images.
- One process against two (torchrun, gloo) for the same global batch.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from elta_core.adapters.torch.data import ImageLabelDataset, iaa_transforms, open_image  # noqa: E402
from elta_core.app import cli  # noqa: E402
from elta_core.app.prepare import prepare  # noqa: E402
from elta_core.data import load_labels  # noqa: E402

COUNT = int(os.environ.get("ELTA_BENCH_JPEGS", "2000"))
WORKERS = 2


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """COUNT smooth 1024 x 768 JPEGs (upsampled noise plus grain: photo-like sizes), an
    AVA-format label file over them, and the folder elta prepare writes (300 x 300)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image_id," + ",".join(f"score{k}" for k in range(2, 12))]
    for k in range(COUNT):
        small = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((1024, 768), Image.BICUBIC)
        pixels = np.asarray(small, dtype=np.int16) + rng.integers(-6, 7, (768, 1024, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "images" / f"{k}.jpg", quality=90)
        rows.append(f"{k}," + ",".join(str(v) for v in rng.multinomial(100, np.full(10, 0.1))))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    table = load_labels(folder / "labels.csv", "ava", image_root=folder / "images")
    prepare(table, str(folder / "images"), folder / "prepared", 300, workers=WORKERS, progress=False)
    return folder


class _TorchvisionDecoded(ImageLabelDataset):
    """The same items, decoded by ``torchvision.io.decode_jpeg`` and transformed as tensors."""

    def __getitem__(self, index):
        from torchvision.io import decode_jpeg, read_file

        row = self.rows[index]
        return self.transform(decode_jpeg(read_file(self.table.images[row]))), self.labels[row]


class _Draft(ImageLabelDataset):
    """PIL with ``draft``: the JPEG decoded at 1/2, 1/4 or 1/8 scale, no smaller than 300."""

    def __getitem__(self, index):
        from PIL import Image

        row = self.rows[index]
        with Image.open(self.table.images[row]) as image:
            image.draft("RGB", (300, 300))
            image = image.convert("RGB")
        return self.transform(image), self.labels[row]


def _tensor_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((300, 300), antialias=True), transforms.RandomCrop(256),
                               transforms.RandomHorizontalFlip(), transforms.ConvertImageDtype(torch.float32),
                               transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def _one_pass(dataset) -> int:
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=WORKERS)
    return sum(len(x) for x, _ in loader)


@pytest.mark.parametrize("name", ["PIL (full size)", "torchvision decode_jpeg (full size)", "PIL draft (full size)",
                                  "PIL after elta prepare (300 x 300)"])
def test_loader_pass(benchmark, photos, name):
    benchmark.group = f"data path: one pass over {COUNT} JPEGs of 1024 x 768, train transform, batch 32, {WORKERS} workers"
    images = photos / ("prepared/images" if "prepare" in name else "images")
    table = load_labels(photos / "labels.csv", "ava", image_root=images)
    transform = iaa_transforms(True, 256, resize=300)
    dataset = {"PIL (full size)": ImageLabelDataset, "PIL after elta prepare (300 x 300)": ImageLabelDataset,
               "PIL draft (full size)": _Draft}.get(name)
    dataset = dataset(table, transform) if dataset else _TorchvisionDecoded(table, _tensor_transform())
    count = benchmark.pedantic(_one_pass, args=(dataset,), rounds=2, iterations=1, warmup_rounds=0)
    assert count == COUNT
    benchmark.extra_info["images_per_second"] = round(COUNT / benchmark.stats.stats.mean, 1)


TRAIN_IMAGES = 1024
TRAIN = ["--backbone", "resnet18", "--resize", "72", "--image-size", "64", "--batch-size", "32", "--epochs", "2",
         "--quiet", "--lr", "1e-4", "--optimizer", "adamw"]


def _subset_labels(photos, count, path):
    lines = (photos / "labels.csv").read_text().splitlines()
    path.write_text("\n".join(lines[: count + 1]) + "\n")
    return path


def _second_epoch_rate(out: Path, images: int) -> float:
    with open(out / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    return images / float(rows[-1]["seconds"])


def _plain_loop(labels: Path, images: Path) -> float:
    """A plain torchvision training loop on the same files: images per second of epoch 2."""
    import torchvision

    from elta_core import losses

    table = load_labels(labels, "ava", image_root=images)
    cut = int(round(len(table) * 0.9))  # elta train's default 10 % hold-out leaves this many to train on
    order = np.random.default_rng(0).permutation(len(table))
    data = ImageLabelDataset(table.subset(np.sort(order[len(table) - cut:])), iaa_transforms(True, 64, resize=72))
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, num_workers=WORKERS, drop_last=True)
    rate = 0.0
    for _ in range(2):
        started, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = losses.emd(model(x).softmax(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
        rate = seen / (time.perf_counter() - started)
    return rate


@pytest.mark.parametrize("name", ["plain torchvision loop", "elta train (TFA + FLSA)"])
def test_train_throughput(benchmark, photos, tmp_path, name):
    benchmark.group = (f"training: images per second of epoch 2, resnet18 at 64 px, {TRAIN_IMAGES} prepared "
                       f"images, batch 32, {WORKERS} workers (the mean time is the whole run)")
    labels = _subset_labels(photos, TRAIN_IMAGES, tmp_path / "labels.csv")
    images = photos / "prepared" / "images"
    trained = int(round(TRAIN_IMAGES * 0.9)) // 32 * 32

    rates = []

    def run() -> None:
        if name.startswith("plain"):
            rates.append(_plain_loop(labels, images))
            return
        out = tmp_path / f"run{time.perf_counter_ns()}"
        assert cli.main(["train", "--labels", str(labels), "--format", "ava", "--images", str(images), *TRAIN,
                         "--workers", str(WORKERS), "--out", str(out)]) == 0
        rates.append(_second_epoch_rate(out, trained))

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info["images_per_second"] = round(float(np.median(rates)), 1)
    benchmark.extra_info["rounds_images_per_second"] = [round(r, 1) for r in rates]


@pytest.mark.parametrize("processes", [1, 2])
def test_processes(benchmark, photos, tmp_path, processes):
    benchmark.group = ("scaling on CPU (gloo): elta train, global batch 64, resnet18 at 64 px, "
                       f"{TRAIN_IMAGES} prepared images; images per second of epoch 2")
    labels = _subset_labels(photos, TRAIN_IMAGES, tmp_path / "labels.csv")
    images = photos / "prepared" / "images"
    trained = int(round(TRAIN_IMAGES * 0.9)) // 64 * 64
    arguments = [a if a != "32" else str(64 // processes) for a in TRAIN]  # the per-process batch
    threads = max(1, (os.cpu_count() or 2) // processes)

    def run() -> float:
        out = tmp_path / f"run{time.perf_counter_ns()}"
        command = ["-m", "elta_core", "train", "--labels", str(labels), "--format", "ava", "--images", str(images),
                   *arguments, "--workers", "1", "--out", str(out)]
        if processes > 1:
            command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, *command], check=True, env=env, capture_output=True)
        return _second_epoch_rate(out, trained)

    rate = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["images_per_second"] = round(rate, 1)
