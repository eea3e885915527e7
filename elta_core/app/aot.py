"""The Triton kernels compiled ahead of time for GPU targets, on a machine without a GPU
(an application-layer tool: it drives the core's public API, which the kernel modules
may not import).

The launches come from the public API itself (:func:`record_launches` runs
``alignment_loss``, ``sharpen``, ``select`` and ``grid_search`` on CPU tensors with every
kernel launch recorded instead of run), so the configurations compiled are the ones the
dispatch rules and the kernels' block choices produce, not a hand-kept list. Each distinct
configuration is compiled with Triton's own ``triton.compile`` for a ``GPUTarget`` and
checked where the interpreter cannot see (docs/design.md, "Kernels on a GPU"):

- it compiles, and its shared memory fits the target;
- no address offset is a 32-bit product of two run-time values (read from the TTIR):
  ``rows * width`` wraps past 2**31, silently, on a GPU;
- a float64 kernel takes no float32 scalar argument (a Python float reaches a kernel as
  float32, which would round float64 arithmetic).

Registers, spills (local memory) and shared memory come from the cubin
(``cuobjdump -res-usage``, bundled with Triton). Runs only without ``TRITON_INTERPRET``
(the kernels must be ``JITFunction`` objects): ``python -m elta_core.app.aot``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from elta_core.app.compiled_code import cubin_resources, narrow_offset_products, resource_table
from elta_core.io import atomic_write_json, atomic_write_text

# name: compute capability; max shared memory a block may use (bytes, opt-in).
TARGETS = {"A100": 80, "H100": 90, "B200": 100}
SHARED_MEMORY_LIMIT = {80: 166_912, 90: 232_448, 100: 232_448}

# The representative subset the test suite compiles, and the whole sweep of the script.
CI_FLSA_SHAPES = [(2, 1), (33, 70), (300, 256), (4096, 64), (48, 4096)]
CI_APDS_SHAPES = [(1, 10), (300, 9), (4096, 101)]
CI_DTYPES = ("float32", "bfloat16", "float64")  # float16 takes bfloat16's path
SWEEP_DTYPES = ("float32", "float16", "bfloat16", "float64")
SWEEP_FLSA_SHAPES = [(b, d) for b in (2, 48, 256, 1024, 8192, 65536) for d in (1, 7, 64, 256, 768, 1024, 4096)
                     if b * d <= 2**26]
SWEEP_APDS_SHAPES = [(n, c) for n in (1, 2, 255, 4096, 255_000) for c in (2, 5, 9, 10, 101)]


@dataclass
class Launch:
    """One kernel configuration as Triton's launcher binds it for one target."""

    kernel: str
    target: int
    signature: dict[str, str]
    constexprs: dict[str, Any]
    attrs: Any = field(repr=False, default=None)
    options: dict[str, Any] = field(repr=False, default_factory=dict)
    function: Any = field(repr=False, default=None)

    def key(self) -> str:
        return f"{self.kernel}|{self.target}|{sorted(self.signature.items())}|{sorted(self.constexprs.items(), key=str)}" \
               f"|{self.attrs}"


@dataclass
class Compiled:
    """What one compilation showed."""

    kernel: str
    target: int
    dtypes: str
    constexprs: str
    seconds: float
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    problems: list[str] = field(default_factory=list)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@contextmanager
def record_launches(targets: Sequence[int]) -> Iterator[list[Launch]]:
    """Every Triton launch made inside the block, bound for each of ``targets`` and not run
    (outputs stay zero); CPU tensors are dispatched to the kernels meanwhile."""
    if _interpreted():
        raise RuntimeError("record_launches: unset TRITON_INTERPRET (the kernels must compile, not be interpreted)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    from elta_core.kernels import dispatch

    backends = {cc: make_backend(GPUTarget("cuda", cc, 32)) for cc in targets}
    binders: dict[tuple[int, int], Callable] = {}  # (kernel, target): Triton's argument binder, made once
    recorded: list[Launch] = []

    def run(self, *args, grid, warmup, **kwargs):
        for cc, backend in backends.items():
            binder = binders.get((id(self), cc))
            if binder is None:
                binder = binders[(id(self), cc)] = create_function_from_signature(self.signature, self.params,
                                                                                   backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = self._pack_args(backend, dict(kwargs), bound, specialization,
                                                                    options)
            names = [p.name for p in self.params]
            named = {names[path[0]] if len(path) == 1 else path: value for path, value in constexprs.items()}
            recorded.append(Launch(f"{self.fn.__module__.rsplit('.', 1)[-1]}.{self.fn.__name__}", cc,
                                   dict(signature), named, attrs, dict(options.__dict__), self))
        return None

    import torch

    # The launches write nothing: outputs allocated meanwhile start at zero rather than
    # uninitialised, so that the host code after a launch (counts to int, ...) runs as usual.
    previous = JITFunction.run, dispatch._cpu_under_interpreter, torch.empty, torch.empty_like
    JITFunction.run, dispatch._cpu_under_interpreter, torch.empty, torch.empty_like = run, True, torch.zeros, \
        torch.zeros_like
    try:
        yield recorded
    finally:
        JITFunction.run, dispatch._cpu_under_interpreter, torch.empty, torch.empty_like = previous


def public_api_calls(flsa_shapes, apds_shapes, dtypes) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(description, call) for each public-API use whose launches are recorded."""
    import torch

    from elta_core import apds, flsa

    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for size, width in flsa_shapes:
            def flsa_call(size=size, width=width, dtype=dtype):
                features = torch.randn(size, width).to(dtype).requires_grad_(True)
                scores = torch.rand(size, dtype=torch.float64) * 9 + 1
                flsa.alignment_loss(features, scores, validate=False).backward()
                with torch.no_grad():
                    flsa.alignment_loss(features, scores, validate=False)

            yield f"alignment_loss {dtype_name} B={size} D={width}", flsa_call
        for size, bins in apds_shapes:
            logits = torch.randn(size, bins).to(dtype)
            yield f"sharpen {dtype_name} N={size} C={bins}", lambda logits=logits: apds.sharpen(logits, 1.2,
                                                                                                validate=False)
            for strict in (False, True):
                yield (f"select {dtype_name} N={size} C={bins} strict={strict}",
                       lambda logits=logits, strict=strict: apds.select(logits, 1.2, 0.5, strict=strict, validate=False))
            if size < 2:
                continue
            labels = torch.rand(size, dtype=torch.float64) * (bins - 1) + 1
            for pseudo_label in ("sharpened", "prediction"):
                for strict in (False, True):
                    def grid_call(logits=logits, labels=labels, bins=bins, pseudo_label=pseudo_label, strict=strict):
                        apds.grid_search(logits, labels, bin_values=list(range(1, bins + 1)), min_selected=1,
                                         pseudo_label=pseudo_label, strict=strict, validate=False)

                    yield f"grid_search {dtype_name} N={size} C={bins} {pseudo_label} strict={strict}", grid_call


def _record(description: str, call: Callable[[], Any], launches: list[Launch], failures: list[str]) -> None:
    """Run ``call`` for its launches. Their outputs stay zero, so the host code after a
    launch may refuse them (a grid search that selects nothing): an error after a launch is
    expected, one before any launch (or no launch at all) is reported. A kernel the
    dispatcher stopped using meanwhile is allowed again for the next call."""
    from elta_core.kernels import dispatch

    before = len(launches)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except Exception as error:  # noqa: BLE001 - reported below when nothing was launched
        if len(launches) == before:
            failures.append(f"{description}: {type(error).__name__}: {error}")
    else:
        if len(launches) == before:
            failures.append(f"{description}: made no Triton launch (the dispatcher chose another implementation)")
    finally:
        dispatch.reset_broken_kernels()


def distinct(launches: Sequence[Launch]) -> list[Launch]:
    seen: dict[str, Launch] = {}
    for launch in launches:
        seen.setdefault(launch.key(), launch)
    return list(seen.values())


def compile_launch(launch: Launch) -> Compiled:
    """Compile one configuration for its target and check it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dtypes = ",".join(sorted({t[1:] for t in launch.signature.values() if t.startswith("*")}))
    shown = {k: str(v) for k, v in launch.constexprs.items()}
    result = Compiled(launch.kernel, launch.target, dtypes, json.dumps(shown, sort_keys=True), 0.0)
    started = time.perf_counter()
    try:
        source = ASTSource(launch.function, launch.signature, launch.constexprs, launch.attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", launch.target, 32), options=launch.options)
    except Exception as error:  # noqa: BLE001 - any compiler failure is the finding
        result.problems.append(f"does not compile: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
        return result
    finally:
        result.seconds = time.perf_counter() - started
    result.shared_bytes = int(compiled.metadata.shared)
    if result.shared_bytes > SHARED_MEMORY_LIMIT[launch.target]:
        result.problems.append(f"{result.shared_bytes} bytes of shared memory, over sm_{launch.target}'s "
                               f"{SHARED_MEMORY_LIMIT[launch.target]}")
    for line in narrow_offset_products(compiled.asm["ttir"]):
        result.problems.append(f"32-bit offset product: {line}")
    if "*fp64" in launch.signature.values():
        narrow = [name for name, kind in launch.signature.items() if kind == "fp32"]
        if narrow:
            result.problems.append(f"float64 kernel with float32 scalar argument(s): {', '.join(narrow)}")
    result.registers, result.spill_bytes = cubin_resources(compiled.asm["cubin"])
    return result


def compile_all(flsa_shapes, apds_shapes, dtypes, targets: Sequence[int],
                progress: Callable[[str], None] = lambda _: None) -> tuple[list[Compiled], list[str]]:
    """Record the public API's launches over the shapes and dtypes, and compile each distinct
    configuration for each target. Returns the results and the calls that raised."""
    failures: list[str] = []
    with record_launches(targets) as launches:
        for description, call in public_api_calls(flsa_shapes, apds_shapes, dtypes):
            _record(description, call, launches, failures)
    configurations = distinct(launches)
    progress(f"{len(launches)} launches recorded, {len(configurations)} distinct configurations to compile")
    results = []
    for k, launch in enumerate(configurations, 1):
        results.append(compile_launch(launch))
        progress(f"[{k}/{len(configurations)}] sm_{launch.target} {launch.kernel} {results[-1].dtypes} "
                 f"{results[-1].seconds:.1f} s {'; '.join(results[-1].problems) or 'ok'}")
    return results, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elta_core.app.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="every shape of the sweep (default: the CI subset)")
    every = ",".join(str(cc) for cc in TARGETS.values())
    parser.add_argument("--targets", default=every, help=f"compute capabilities (default {every}: "
                        + ", ".join(f"{name} {cc}" for name, cc in TARGETS.items()) + ")")
    parser.add_argument("--dtypes", help="comma-separated torch dtypes (default: the CI subset's "
                        f"{','.join(CI_DTYPES)}; with --sweep {','.join(SWEEP_DTYPES)})")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--markdown", help="write the resource table here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        targets = [int(t) for t in args.targets.split(",")]
    except ValueError:
        parser.error(f"--targets: expected comma-separated compute capabilities like 80,90, got {args.targets!r}")
    unknown = [t for t in targets if t not in TARGETS.values()]
    if unknown:
        parser.error(f"--targets: expected some of {every}, got {unknown}")
    known = tuple(dict.fromkeys(SWEEP_DTYPES + CI_DTYPES))
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else (SWEEP_DTYPES if args.sweep else CI_DTYPES)
    if not set(dtypes) <= set(known):
        parser.error(f"--dtypes: expected some of {','.join(known)}, got {args.dtypes!r}")
    import torch

    torch.set_num_threads(1)
    shapes = (SWEEP_FLSA_SHAPES, SWEEP_APDS_SHAPES) if args.sweep else (CI_FLSA_SHAPES, CI_APDS_SHAPES)
    say = (lambda _: None) if args.quiet else (lambda text: print(text, flush=True))
    results, failures = compile_all(*shapes, dtypes, targets, progress=say)
    table = resource_table(results)
    if args.json:
        atomic_write_json(args.json, {"results": [asdict(r) for r in results], "failures": failures})
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    print(table)
    problems = [f"sm_{r.target} {r.kernel} {r.dtypes} {r.constexprs}: {p}" for r in results for p in r.problems]
    for line in failures + problems:
        print(f"PROBLEM {line}", file=sys.stderr)
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
