"""GPU benchmark of the Triton kernels (issue 6), one self-contained script.

On a CUDA machine, from the repository root (elta_core installed, or importable from
the checkout):

    python benchmarks/gpu_kernels.py --out gpu_kernels.md

It times the FLSA loss, forward, forward with the autograd graph, backward and both,
for the plain B x B formula (torch eager and torch.compile), the elta_core reference
(torch eager and torch.compile; Triton switched off) and the Triton kernels, and reports
the peak extra GPU memory of one forward+backward and the Triton loss's relative error
against the float64 reference. Then the APDS grid search on N = 255,000 with the default
grid. The output is Markdown with the GPU name and the versions; each table row is
written as soon as it is measured, so a run stopped early keeps what it has.

``--smoke`` runs two tiny shapes on the CPU under the Triton interpreter (used by the
test suite to keep the script working without a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SIZES = [48, 256, 1024, 4096, 16384, 65536]
WIDTHS = [768, 1024]
GRID_ROWS = 255_000


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="start no new shape after this many seconds (default 480)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    return parser.parse_args(argv)


class Report:
    """Markdown lines, printed and appended to ``--out`` as they come."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.write_text("")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(text + "\n")


def _timer(device: str):
    if device == "cuda":
        import triton.testing

        def measure(fn: Callable[[], object]) -> float:
            return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")

        return measure

    def measure_cpu(fn: Callable[[], object]) -> float:
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return measure_cpu


def _peak_extra_mib(fn: Callable[[], object], device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _implementations(smoke: bool):
    import torch

    from benchmarks.baselines import plain_formula
    from elta_core import flsa, kernels

    def reference(features, scores):
        kernels.set_triton_enabled(False)
        try:
            return flsa.alignment_loss(features, scores, validate=False)
        finally:
            kernels.set_triton_enabled(True)

    def fused(features, scores):  # under torch.compile the dispatch takes the reference
        return flsa.alignment_loss(features, scores, validate=False)

    # dynamic shapes: one compilation per dtype and grad mode instead of one per shape
    compile_backend = "aot_eager" if smoke else "inductor"
    return {
        "plain B x B, eager": plain_formula,
        "plain B x B, torch.compile": torch.compile(plain_formula, dynamic=True, backend=compile_backend),
        "elta_core reference, eager": reference,
        "elta_core reference, torch.compile": torch.compile(fused, dynamic=True, backend=compile_backend),
        "elta_core Triton": fused,
    }


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _flsa_rows(report: Report, args, device: str, measure) -> None:
    import torch

    from elta_core import flsa, kernels

    implementations = _implementations(args.smoke)
    started = time.monotonic()
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for width in args.widths:
            report.line(f"\n### FLSA, D = {width}, {dtype_name}\n")
            report.line("| B | implementation | forward (ms) | forward with graph (ms) | backward (ms) | "
                        "forward+backward (ms) | peak extra memory (MiB) | loss rel. error vs float64 |")
            report.line("|---:|---|---:|---:|---:|---:|---:|---:|")
            for size in args.sizes:
                if time.monotonic() - started > args.budget_s:
                    report.line(f"| {size} | (skipped: --budget-s {args.budget_s:g} reached) | | | | | | |")
                    continue
                generator = torch.Generator(device=device).manual_seed(size + width)
                features = torch.randn(size, width, device=device, generator=generator).to(dtype)
                scores = torch.rand(size, device=device, generator=generator) * 9 + 1
                kernels.set_triton_enabled(False)
                exact = flsa.alignment_loss(features.double(), scores.double(), validate=False).item()
                kernels.set_triton_enabled(True)
                for name, fn in implementations.items():
                    report.line(_flsa_row(size, name, fn, features, scores, exact, device, measure))
                    if device == "cuda":
                        torch.cuda.empty_cache()


def _flsa_row(size, name, fn, features, scores, exact, device, measure) -> str:
    import torch

    leaf = features.detach().clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            return fn(features, scores)

    def forward_with_graph():
        return fn(leaf, scores)

    def both():
        leaf.grad = None
        fn(leaf, scores).backward()

    try:
        loss = forward_with_graph().item()
        both()  # compiles, warms up
        forward_ms, graph_ms, both_ms = measure(forward), measure(forward_with_graph), measure(both)
        memory = _peak_extra_mib(both, device)
    except torch.OutOfMemoryError:
        return f"| {size} | {name} | OOM | OOM | OOM | OOM | > free memory | |"
    error = abs(loss - exact) / max(abs(exact), 1e-30)
    return (f"| {size} | {name} | {_format(forward_ms)} | {_format(graph_ms)} | "
            f"{_format(max(both_ms - graph_ms, 0.0))} | {_format(both_ms)} | {_format(memory)} | {error:.1e} |")


def _grid_rows(report: Report, args, device: str, measure) -> None:
    import torch

    from elta_core import apds, kernels

    rows = 2048 if args.smoke else GRID_ROWS
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, 10, device=device, generator=generator) * 2
    labels = torch.rand(rows, device=device, generator=generator) * 9 + 1
    report.line(f"\n### APDS grid search, N = {rows:,}, C = 10, default grid (4 betas x 5 thresholds)\n")
    report.line("| implementation | time (ms) | same counts as reference (+-1) |")
    report.line("|---|---:|---|")

    def search(min_selected=1):
        return apds.grid_search(logits, labels, min_selected=min_selected, validate=False)

    kernels.set_triton_enabled(False)
    reference_ms = measure(search)
    expected = search()
    kernels.set_triton_enabled(True)
    fused_ms = measure(search)
    result = search()
    same = all(abs(a.num_selected - b.num_selected) <= 1 for a, b in zip(result.table, expected.table))
    report.line(f"| elta_core reference, eager | {_format(reference_ms)} | yes |")
    report.line(f"| elta_core Triton | {_format(fused_ms)} | {'yes' if same else 'NO'} |")


def main(argv=None) -> int:
    args = _parse(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        args.sizes, args.widths, args.dtypes = [3, 40], [24], ["float32"]
    sys.path.insert(0, str(ROOT))
    import torch
    import triton

    from elta_core.kernels import triton_available
    from elta_core.kernels.triton_ops import cpu_tensors_under_interpreter

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_kernels.py: no CUDA device; run it on a GPU machine, or pass --smoke", file=sys.stderr)
        return 2
    if not triton_available():
        print(f"gpu_kernels.py: {triton_available().reason}", file=sys.stderr)
        return 2
    report = Report(args.out)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'unknown'}), interpreter"
    report.line("## Triton kernels on GPU (benchmarks/gpu_kernels.py)\n")
    report.line(f"**Device:** {name}. **Date:** {datetime.date.today()}. torch {torch.__version__}, "
                f"Triton {triton.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}. "
                "Median times (triton.testing.do_bench); torch.compile with dynamic shapes, compilation excluded.")
    measure = _timer(device)
    with cpu_tensors_under_interpreter() if args.smoke else contextlib.nullcontext():
        _flsa_rows(report, args, device, measure)
        _grid_rows(report, args, device, measure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
