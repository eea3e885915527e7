"""A small SelfTraining run (or ``elta train --apds``) for the fault-injection tests, in
its own process.

``python -m tests.fault_runner WORKDIR [FAULT]``, or
``python -m tests.fault_runner --cli LABELS IMAGES OUT [FAULT]``. FAULT kills this process with SIGKILL:
``train:N`` at the N-th training step (round 1 or 2 alike), ``predict:N`` at the N-th
predicted batch, ``write:NAME`` inside the atomic write of the stage file NAME (the
temporary file written, not yet renamed). ``betas=...`` changes the grid.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch.utils.data import TensorDataset

from elta_core.adapters.torch import ELTAWrapper, SelfTraining
from elta_core.adapters.torch import self_training as module
from tests.torch_models import TwoLayer, distributions


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(fault: str) -> None:
    kind, _, value = fault.partition(":")
    if kind == "train":
        calls = {"n": 0}
        forward = ELTAWrapper.forward

        def counting(self, x, y=None):
            if y is not None and self.training:
                calls["n"] += 1
                if calls["n"] == int(value):
                    _kill()
            return forward(self, x, y)

        ELTAWrapper.forward = counting
    elif kind == "predict":
        calls = {"n": 0}
        from elta_core.adapters.torch import prediction

        original = prediction.split_batch

        def counting(batch):
            calls["n"] += 1
            if calls["n"] == int(value):
                _kill()
            return original(batch)

        prediction.split_batch = counting
    elif kind == "write":
        import elta_core.io as io

        original = io.atomic_write

        def killing(path, write, **options):
            if os.path.basename(str(path)) == value:
                def half(stream):
                    write(stream)
                    stream.flush()
                    _kill()
                return original(path, half, **options)
            return original(path, write, **options)

        from elta_core.adapters.torch import checkpoints

        checkpoints.atomic_write = io.atomic_write = killing


def main(workdir: str, fault: str = "") -> None:
    torch.manual_seed(0)
    betas = (1.0, 1.1, 1.2, 1.25)
    if fault.startswith("betas="):
        betas = tuple(float(b) for b in fault.split("=")[1].split(","))
    elif fault:
        _install(fault)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(160, 4, generator=generator)
    y = distributions(160, seed=2)
    wrapper = ELTAWrapper(TwoLayer(), "fc", num_pairs=2, seed=3)
    trainer = SelfTraining(
        wrapper, workdir, epochs=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.3), betas=betas,
        thresholds=(0.12, 0.15, 0.2), min_selected=5, batch_size=8, progress=False,
        loader_kwargs={"generator": torch.Generator().manual_seed(4)},
    )
    trainer.run(TensorDataset(x[:40], y[:40]), TensorDataset(x[40:80], y[40:80]), TensorDataset(x[80:]))


def main_cli(labels: str, images: str, out: str, fault: str = "") -> int:
    """``elta train --apds`` (2 epochs, one round) on an exported synthetic dataset;
    resumes with --resume when OUT already holds a run."""
    from pathlib import Path

    from elta_core.app.cli import main as elta

    if fault:
        _install(fault)
    resume = ["--resume"] if Path(out).is_dir() and any(Path(out).iterdir()) else []
    return elta(["train", "--labels", labels, "--format", "ava", "--images", images, "--backbone", "resnet18",
                 "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--tfa", "--flsa", "1.0",
                 "--val-fraction", "0.25", "--apds", "--unlabelled", images, "--thresholds", "0.05,0.1",
                 "--min-selected", "2", "--round2-epochs", "1", "--out", out, "--quiet", *resume])


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        sys.exit(main_cli(*sys.argv[2:]))
    main(*sys.argv[1:])
