#!/usr/bin/env bash
# elta train on GPUs: the one command to run on the first machine with CUDA GPUs
# (`bash benchmarks/gpu_train_throughput.sh`, from the repository root, elta-core[all,timm] installed).
#
# It measures, in one run, images per second of the second epoch (metrics.csv) for
#   1. a plain torchvision-style loop and `elta train` (TFA + FLSA) on 1 GPU, same model,
#      data, batch, workers, precision;
#   2. `elta train` on 1 GPU and on all GPUs of the machine (torchrun, NCCL), same per-GPU batch;
# on the built-in dataset written at photo size and prepared to 300 x 300 (the recipe's
# resize), with the paper's recipe, bf16 and channels-last.
#
# What it must show (and what to write into benchmarks/README.md with the machine):
#   - elta train / plain loop >= 0.95 on 1 GPU;
#   - N GPUs >= 0.9 * N times 1 GPU (the data path keeps up: check GPU utilisation with
#     `nvidia-smi dmon` while it runs; if not, raise --workers);
#   - the Triton kernels are used (ELTA_TRITON_DEFAULT unset) and no fallback warning is printed.
set -euo pipefail
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
WORK=${WORK:-/tmp/elta_gpu_bench}
BACKBONE=${BACKBONE:-timm/swinv2_tiny_window8_256}
mkdir -p "$WORK"
[ -f "$WORK/data/train.csv" ] || elta synth --out "$WORK/data" --count 6000 --image-size 512 --split 0.9,0.05,0.05
[ -f "$WORK/prepared/manifest.json" ] || elta prepare --labels "$WORK/data/labels.csv" --format ava \
    --images "$WORK/data/images" --size 300 --out "$WORK/prepared" --quiet
COMMON=(train --recipe paper --backbone "$BACKBONE" --labels "$WORK/data/train.csv" --format ava
        --images "$WORK/prepared/images" --test-labels "$WORK/data/test.csv" --select-best none --epochs 2
        --precision bf16 --channels-last --quiet)
rm -rf "$WORK/one" "$WORK/all"
python -m elta_core "${COMMON[@]}" --out "$WORK/one"
torchrun --standalone --nproc-per-node "$GPUS" -m elta_core "${COMMON[@]}" --out "$WORK/all"
python - "$WORK" "$GPUS" "$BACKBONE" <<'EOF'
import csv, sys, time
from pathlib import Path

import timm
import torch

from elta_core import losses
from elta_core.adapters.torch.data import ImageLabelDataset, iaa_transforms
from elta_core.app.run.resources import loader_options
from elta_core.data import load_labels

work, gpus, backbone = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].removeprefix("timm/")
table = load_labels(work / "data" / "train.csv", "ava", image_root=work / "prepared" / "images")
data = ImageLabelDataset(table, iaa_transforms(True, 256, resize=300))
device = torch.device("cuda")
model = timm.create_model(backbone, pretrained=False, num_classes=10).to(device, memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
loader = torch.utils.data.DataLoader(data, batch_size=48, shuffle=True, drop_last=True, **loader_options(None, device))
for epoch in range(2):
    started, seen = time.perf_counter(), 0
    for x, y in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = losses.emd(model(x.to(device, non_blocking=True)).float().softmax(1), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(x)
    torch.cuda.synchronize()
    plain = seen / (time.perf_counter() - started)

def rate(run, processes):  # the whole epoch's images (every rank's) per second
    rows = list(csv.DictReader(open(work / run / "metrics.csv")))
    return len(data) // (48 * processes) * 48 * processes / float(rows[-1]["seconds"])

one, every = rate("one", 1), rate("all", gpus)
print(f"| plain loop, 1 GPU | {plain:.0f} images/s |")
print(f"| elta train, 1 GPU | {one:.0f} images/s | {one / plain:.3f} of the plain loop |")
print(f"| elta train, {gpus} GPUs | {every:.0f} images/s | {every / one:.2f}x one GPU |")
EOF
