"""The optimizer step of ``elta train`` (:func:`elta_core.adapters.torch.loop.make_optimizer`,
the fused AdamW kernel) against torch's default AdamW and its ``foreach`` variant, in the
same run: resnet18's 11.2 M parameters with gradients in place, one thread (the
real-image benchmark's setting; tiny ops stall on a busy 2-core machine's thread pool).
Every round runs each variant's step once, in turn; the medians and the ratios to the
default go to ``extra_info``. A forward and backward of resnet18 at 16 px, B = 32, is
timed in the same rounds for scale.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from benchmarks.bench_peers import _interleaved  # noqa: E402
from elta_core.adapters.torch.loop import make_optimizer  # noqa: E402


def _model_with_gradients() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model(torch.randn(32, 3, 16, 16)).square().mean().backward()
    return model


def test_adamw_step_fused_against_the_default(benchmark):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        variants = {"baseline": lambda p: torch.optim.AdamW(p, lr=1e-4),  # torch's default for CPU tensors
                    "foreach": lambda p: torch.optim.AdamW(p, lr=1e-4, foreach=True),
                    "make_optimizer (fused)": lambda p: make_optimizer(torch.optim.AdamW, p, lr=1e-4)}
        steps = {}
        for name, build in variants.items():
            optimizer = build(_model_with_gradients().parameters())
            steps[name] = optimizer.step
        model, x = _model_with_gradients(), torch.randn(32, 3, 16, 16)
        steps["(forward + backward, for scale)"] = lambda: model(x).square().mean().backward()
        _interleaved(benchmark, steps, rounds=30, group="AdamW step, resnet18 (11.2 M parameters), CPU, 1 thread")
    finally:
        torch.set_num_threads(threads)
