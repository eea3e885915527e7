"""``elta doctor``: a new machine's self-check of the fused kernels.

On each device it runs every kernel that would run there (Triton on a CUDA GPU, or on the
CPU under ``TRITON_INTERPRET=1``; the native kernels on the CPU) against the float64
reference at representative shapes and dtypes, times the kernel against the reference in
eager mode and under ``torch.compile`` (warm-up and compilation excluded; CUDA events on a
GPU), reads the compiled kernels' registers and spills where Triton reports them, and on a
GPU runs one wrapped training step under ``torch.cuda.set_sync_debug_mode("error")`` to
show that the step never waits for the host. One table; any mismatch is a failure.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

from elta_core import apds, flsa, kernels
from elta_core.kernels import dispatch

# Largest error allowed against the float64 reference, relative to the reference's scale.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 1e-2}
TF32_TOLERANCE = 5e-3  # float32 tiles at TF32 (torch.get_float32_matmul_precision() != "highest")
GPU_FLSA = [(8192, 768), (65536, 256), (1024, 4096)]
GPU_GRID = [255_000]
CPU_FLSA = [(2048, 64), (16, 512)]  # the native Gram form (B > D) and pair pass (B * B * D <= 131,072)
CPU_GRID = [4096]
INTERPRETER_FLSA = [(24, 40), (40, 12)]  # the Triton interpreter is ~1000x slower than eager
INTERPRETER_GRID = [300]


@dataclass
class Check:
    device: str
    kernel: str
    operation: str
    shape: str
    dtype: str
    error: float | None
    tolerance: float
    kernel_ms: float | None = None
    reference_ms: float | None = None
    compiled_ms: float | None = None
    resources: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error is not None and self.error <= self.tolerance


@contextlib.contextmanager
def _only(impl: str) -> Iterator[None]:
    """Only ``impl`` ("triton", "native" or "reference") may run inside the block."""
    triton_on, native_on = kernels.triton_enabled(), kernels.native_enabled()
    kernels.set_triton_enabled(impl == "triton")
    kernels.set_native_enabled(impl == "native")
    interpreter = dispatch._cpu_under_interpreter
    dispatch._cpu_under_interpreter = interpreter or impl == "triton"
    try:
        yield
    finally:
        kernels.set_triton_enabled(triton_on)
        kernels.set_native_enabled(native_on)
        dispatch._cpu_under_interpreter = interpreter


def _timer(device: torch.device, repeats: int) -> Callable[[Callable[[], Any]], float]:
    """Median milliseconds of ``fn()`` after one warm-up call (which also compiles)."""
    def measure(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)

    return measure


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not bool(torch.isfinite(actual).all()):
        return float("inf")
    scale = max(float(expected.abs().max()), 1e-30)
    return float((actual - expected).abs().max()) / scale


def _tolerance(dtype: torch.dtype, impl: str) -> float:
    if impl == "triton" and dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


def _scores_for(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The scores in the dtype FLSA computes features of ``dtype`` in."""
    return scores if dtype == torch.float64 else scores.float()


def check_flsa(device: torch.device, impl: str, size: int, width: int, dtype: torch.dtype, measure,
               compile_backend: str | None) -> Check:
    generator = torch.Generator(device=device).manual_seed(size + width)
    features = torch.randn(size, width, device=device, generator=generator).to(dtype)
    scores = torch.rand(size, device=device, generator=generator, dtype=torch.float64) * 9 + 1
    result = Check(str(device), impl, "FLSA loss + gradient", f"B={size} D={width}", str(dtype).split(".")[-1],
                   None, _tolerance(dtype, impl))

    def loss_and_grad(z: torch.Tensor):
        leaf = z.detach().clone().requires_grad_(True)
        loss = flsa.alignment_loss(leaf, _scores_for(scores, z.dtype), validate=False)
        loss.backward()
        return loss, leaf.grad

    with _only("reference"):
        expected_loss, expected_grad = loss_and_grad(features.double())
    with _only(impl):
        chosen = dispatch.select_impl("flsa", "torch", features, rows=size, width=width)
        if chosen != impl:
            result.note = f"not dispatched to {impl} at this shape ({chosen} runs)"
            return result
        loss, grad = loss_and_grad(features)
        result.error = max(_relative(loss, expected_loss), _relative(grad, expected_grad))
        result.kernel_ms = measure(lambda: loss_and_grad(features))
    with _only("reference"):
        result.reference_ms = measure(lambda: loss_and_grad(features))
        if compile_backend:
            compiled = torch.compile(lambda z, s: flsa.alignment_loss(z, s, validate=False), dynamic=False,
                                     backend=compile_backend)
            leaf, compiled_scores = features.detach().clone().requires_grad_(True), _scores_for(scores, dtype)
            result.compiled_ms = measure(lambda: compiled(leaf, compiled_scores).backward())
    return result


def check_grid(device: torch.device, impl: str, rows: int, dtype: torch.dtype, measure) -> Check:
    generator = torch.Generator(device=device).manual_seed(rows)
    logits = (torch.randn(rows, 10, device=device, generator=generator) * 2).to(dtype)
    labels = torch.rand(rows, device=device, generator=generator, dtype=torch.float64) * 9 + 1
    operation = "APDS grid search + sharpen" if impl == "triton" else "APDS grid search"
    result = Check(str(device), impl, operation, f"N={rows} C=10", str(dtype).split(".")[-1],
                   None, TOLERANCE[dtype] if impl != "triton" or dtype == torch.float64 else 1e-4)

    def search(x):
        return apds.grid_search(x, labels, min_selected=1, validate=False)

    with _only("reference"):
        expected = search(logits.double())
        expected_sharpened = apds.sharpen(logits.double(), 1.2, validate=False)
    with _only(impl):
        chosen = dispatch.select_impl("apds_grid", "torch", logits, rows=rows, width=10)
        if chosen != impl:
            result.note = f"not dispatched to {impl} at this shape ({chosen} runs)"
            return result
        found = search(logits)
        # a sample within rounding of a threshold may fall either side: one count apart at most
        counts = max(abs(a.num_selected - b.num_selected) for a, b in zip(found.table, expected.table))
        errors = [abs(a.mae - b.mae) / max(abs(b.mae), 1e-30) for a, b in zip(found.table, expected.table)
                  if a.mae is not None and b.mae is not None and a.num_selected == b.num_selected]
        result.error = max(errors + [0.0]) if counts <= 1 else float("inf")
        if impl == "triton":  # the row kernel too
            result.error = max(result.error, _relative(apds.sharpen(logits, 1.2, validate=False), expected_sharpened))
        result.kernel_ms = measure(lambda: search(logits))
    with _only("reference"):
        result.reference_ms = measure(lambda: search(logits))
    return result


def kernel_resources(device: torch.device) -> str:
    """Registers and spills of the Triton kernels compiled in this process (the most of any
    configuration), e.g. ``_direct_kernel 188/0``; empty where Triton does not say."""
    from elta_core.kernels.triton_ops import apds as apds_kernels, flsa as flsa_kernels

    found = []
    for module in (flsa_kernels, apds_kernels):
        for name in dir(module):
            caches = getattr(getattr(module, name), "device_caches", None)
            if not caches:
                continue
            compiled = [k for cache in list(caches.values()) for k in cache[0].values()]
            registers = [getattr(k, "n_regs", None) for k in compiled]
            spills = [getattr(k, "n_spills", None) for k in compiled]
            if registers and None not in registers:
                found.append(f"{name.strip('_')} {max(registers)}/{max(spills or [0])}")
    return ", ".join(found)


def check_no_host_sync(device: torch.device) -> Check:
    """One ELTA training step (TFA + FLSA + EMD, backward, optimizer step) with CUDA's sync
    debug mode set to raise: a step that waits for the host fails."""
    from elta_core.adapters.torch import ELTAWrapper

    result = Check(str(device), "all", "training step without host sync", "B=64, 3x16x16", "float32", None, 0.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).to(device)
    wrapper = ELTAWrapper(model, head="3", num_pairs=4, flsa_weight=1.0)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-3)
    images = torch.randn(64, 3, 16, 16, device=device)
    labels = torch.softmax(torch.randn(64, 10, device=device), dim=1)

    def step():
        out = wrapper(images, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    step()  # lazy initialisation (optimizer state, kernel compilation) may synchronise once
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        result.error = 0.0
    except RuntimeError as error:
        result.error = float("inf")
        result.note = " ".join(str(error).split())[:200]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return result


def run_checks(devices: list[torch.device], *, quick: bool = False, compile_backend: str | None = "inductor",
               progress: Callable[[str], None] = lambda _: None) -> list[Check]:
    """Every check for ``devices``; see the module's docstring."""
    import os

    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        progress(f"{check.device} {check.kernel} {check.operation} {check.shape} {check.dtype}: "
                 f"{'ok' if check.ok else 'FAILED'} {check.note}")

    for device in devices:
        repeats = 3 if quick else 10
        measure = _timer(device, repeats)
        plans: list[tuple[str, list, list, list[torch.dtype]]] = []
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if kernels.triton_available() and (device.type == "cuda" or interpreted):
            small = device.type != "cuda"
            plans.append(("triton", INTERPRETER_FLSA if small else GPU_FLSA[:1 if quick else None],
                          INTERPRETER_GRID if small else GPU_GRID,
                          [torch.float32] if small else [torch.float32, torch.bfloat16, torch.float64]))
        if device.type == "cpu" and kernels.native_available():
            plans.append(("native", CPU_FLSA, CPU_GRID, [torch.float32, torch.float64]))
        for impl, flsa_shapes, grid_rows, dtypes in plans:
            backend = compile_backend if impl == "native" or device.type == "cuda" else None
            for dtype in dtypes:
                for size, width in flsa_shapes:
                    add(check_flsa(device, impl, size, width, dtype, measure, backend))
                for rows in grid_rows:
                    if dtype in (torch.float32, torch.float64):
                        add(check_grid(device, impl, rows, dtype, measure))
            if impl == "triton" and device.type == "cuda":
                resources = kernel_resources(device)
                for check in checks:
                    if check.kernel == "triton" and check.device == str(device):
                        check.resources = resources
        if device.type == "cuda":
            add(check_no_host_sync(device))
    return checks


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def table(checks: list[Check]) -> str:
    lines = ["| device | kernel | operation | shape | dtype | error vs float64 | tolerance | ok | kernel (ms) | "
             "reference eager (ms) | reference torch.compile (ms) | x vs compiled | note |",
             "|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for c in checks:
        speedup = f"{c.compiled_ms / c.kernel_ms:.2f}" if c.compiled_ms and c.kernel_ms else "-"
        error = "-" if c.error is None else f"{c.error:.1e}"
        note = "; ".join(x for x in (c.note, f"registers/spills: {c.resources}" if c.resources else "") if x)
        lines.append(f"| {c.device} | {c.kernel} | {c.operation} | {c.shape} | {c.dtype} | {error} | "
                     f"{c.tolerance:.0e} | {'yes' if c.ok else 'NO'} | {_ms(c.kernel_ms)} | {_ms(c.reference_ms)} | "
                     f"{_ms(c.compiled_ms)} | {speedup} | {note} |")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [{**asdict(c), "ok": c.ok} for c in checks]
