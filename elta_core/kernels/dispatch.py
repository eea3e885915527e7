"""Which implementation runs each kernel-backed operation: the one place that decides.

Policy (the reference is the definition; a kernel is an optional speed-up):

=============  =======================================  ========================================  =========
operation      Triton (GPU)                             native (CPU)                              reference
=============  =======================================  ========================================  =========
``flsa``       torch CUDA tensor; both forms            NumPy or torch CPU: the Gram form, or     otherwise
                                                        the direct one at ``B*B*D <= 131,072``
``apds_rows``  torch CUDA tensor with rows              never (the reference is as fast)          otherwise
``apds_grid``  torch CUDA tensor with rows              NumPy or torch CPU; ``N >= 2,048``        otherwise
=============  =======================================  ========================================  =========

Rules shared by both kernel families, checked in this order:

1. The family is switched on (``ELTA_TRITON`` / ``ELTA_NATIVE`` not ``0``, or
   :func:`~elta_core.kernels.set_triton_enabled` / :func:`~elta_core.kernels.set_native_enabled`)
   and importable (:func:`~elta_core.kernels.triton_available`, ``native_available``).
2. Under ``torch.compile`` tracing the reference runs, so that the compiler sees plain ops.
3. An explicit FLSA ``form`` runs on a kernel only if the kernel implements that form
   (both families implement ``"direct"`` and ``"gram"``).
4. The shape rule of the table. The native thresholds were measured on 2 CPU cores
   (``benchmarks/README.md``). The Triton kernels have only run under the interpreter:
   no GPU measurement shows them faster than the reference yet, so ``TRITON_BY_DEFAULT``
   is the switch that makes the reference the default for CUDA tensors should the first
   GPU run show they are not.
5. A kernel that fails to compile or launch is not retried: :func:`run` warns once,
   naming the operation and the error, and the reference runs from then on.

The core asks :func:`kernel` for an operation and gets the function to call (or None:
the reference), then :func:`run` calls it. Every kernel module is imported here, lazily,
and none imports the core. The core's input checks run before any of this.
"""

from __future__ import annotations

import os
import warnings
from importlib import import_module
from typing import Any, Callable, Literal, NamedTuple, TypeVar

__all__ = ["Impl", "Kernel", "TRITON_BY_DEFAULT", "flsa_form", "kernel", "run", "select_impl"]

Impl = Literal["triton", "native", "reference"]
Operation = Literal["flsa", "apds_rows", "apds_grid"]

TRITON_BY_DEFAULT = os.environ.get("ELTA_TRITON_DEFAULT", "1").strip().lower() not in ("0", "false", "no", "off")
NATIVE_FLSA_MAX_PAIR_WORK = 131_072  # B * B * D; past this BLAS wins (benchmarks/README.md)
NATIVE_GRID_MIN_ROWS = 2048
_NATIVE_FORMS = {"flsa": ("auto", "direct", "gram"), "apds_grid": ("auto",)}
# (operation, implementation) -> "module:function"; the signatures are the core's contract:
#   flsa(features (B, D), scores (B,), form) -> loss, differentiable w.r.t. the features
#   apds_rows(logits, values, beta, mean_score, score_scale, threshold=1, strict=False) -> (sharpened, max, kept)
#   apds_grid(logits, true, values, betas, thresholds, mean_score, score_scale, strict, sharpened) -> (counts, sums)
_KERNELS: dict[tuple[str, str], str] = {
    ("flsa", "triton"): "elta_core.kernels.triton_ops.flsa:flsa_loss",
    ("flsa", "native"): "elta_core.kernels.native:flsa_loss",
    ("apds_rows", "triton"): "elta_core.kernels.triton_ops.apds:sharpen_rows",
    ("apds_grid", "triton"): "elta_core.kernels.triton_ops.apds:grid_accumulate",
    ("apds_grid", "native"): "elta_core.kernels.native:grid_accumulate",
}
_broken: dict[tuple[Operation, Impl], str] = {}
T = TypeVar("T")
_cpu_under_interpreter = False  # set by triton_ops.cpu_tensors_under_interpreter (tests)


def flsa_form(size: int, width: int) -> str:
    """The FLSA form for ``form="auto"``: ``"gram"`` (no B x B matrix) when B > D."""
    return "gram" if size > width else "direct"


def _compiling(backend_name: str) -> bool:
    if backend_name != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def _device_type(backend_name: str, tensor: Any) -> str:
    if backend_name == "numpy":
        return "cpu"
    if backend_name == "torch":
        return tensor.device.type
    return "other"


def _triton_allowed(op: Operation, backend_name: str, tensor: Any, rows: int) -> bool:
    from elta_core.kernels import triton_enabled

    if backend_name != "torch" or rows == 0 or (op, "triton") in _broken or (op, "triton") not in _KERNELS:
        return False
    device = _device_type(backend_name, tensor)
    if not (device == "cuda" and TRITON_BY_DEFAULT) and not (device == "cpu" and _cpu_under_interpreter):
        return False
    return triton_enabled()


def _native_allowed(op: Operation, backend_name: str, tensor: Any, rows: int, width: int, form: str) -> bool:
    from elta_core.kernels import native_enabled

    if op not in _NATIVE_FORMS or form not in _NATIVE_FORMS[op] or (op, "native") in _broken:
        return False
    if _device_type(backend_name, tensor) != "cpu" or not native_enabled():
        return False
    if op == "flsa":
        resolved = flsa_form(rows, width) if form == "auto" else form
        return resolved == "gram" or rows * rows * width <= NATIVE_FLSA_MAX_PAIR_WORK
    return rows >= NATIVE_GRID_MIN_ROWS


def select_impl(op: Operation, backend_name: str, tensor: Any, *, rows: int, width: int = 0,
                form: str = "auto") -> Impl:
    """The implementation of ``op`` for ``tensor`` (rows x width) of backend ``backend_name``."""
    if _compiling(backend_name):
        return "reference"
    if _triton_allowed(op, backend_name, tensor, rows):
        return "triton"
    if _native_allowed(op, backend_name, tensor, rows, width, form):
        return "native"
    return "reference"


class Kernel(NamedTuple):
    """The kernel chosen for an operation: its name, its family and the function."""

    op: str
    impl: Impl
    function: Callable[..., Any]


def kernel(op: Operation, backend_name: str, tensor: Any, *, rows: int, width: int = 0,
           form: str = "auto") -> Kernel | None:
    """The kernel that runs ``op`` for ``tensor`` (rows x width), or None where the
    reference runs (:func:`select_impl` decides)."""
    impl = select_impl(op, backend_name, tensor, rows=rows, width=width, form=form)
    if impl == "reference":
        return None
    module, name = _KERNELS[(op, impl)].split(":")
    return Kernel(op, impl, getattr(import_module(module), name))


def run(chosen: Kernel | None, call: Callable[[Callable[..., Any]], T], reference: Callable[[], T]) -> T:
    """``call(chosen.function)``, falling back to ``reference()`` with one warning if the
    kernel fails to compile or launch; ``reference()`` when no kernel was chosen."""
    if chosen is None:
        return reference()
    try:
        return call(chosen.function)
    except Exception as error:  # noqa: BLE001 - any compile or launch failure; the inputs were checked
        reason = f"{type(error).__name__}: {error}"
        _broken[(chosen.op, chosen.impl)] = reason
        warnings.warn(f"elta_core: the {chosen.impl} kernel for {chosen.op} failed ({reason}); the reference "
                      "implementation runs instead from now on in this process", RuntimeWarning, stacklevel=3)
        return reference()


def broken_kernels() -> dict[tuple[str, str], str]:
    """The kernels that failed in this process and why (they are no longer used)."""
    return dict(_broken)


def reset_broken_kernels() -> None:
    """Allow kernels that failed to be tried again (e.g. after fixing the driver)."""
    _broken.clear()
