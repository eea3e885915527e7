"""Fused kernels for the hot paths. The reference functions in :mod:`elta_core` stay the
definition; every kernel is tested against them, and :mod:`elta_core.kernels.dispatch`
alone decides which implementation runs (its docstring holds the policy table).

- Native CPU kernels (C++17, nanobind, OpenMP), built by ``CMakeLists.txt`` at install
  time: the FLSA loss and gradient for small batches and the grid-search accumulation,
  used where ``benchmarks/README.md`` measured them faster. :func:`native_available`
  says whether they were built and, if not, why. ``ELTA_NATIVE=0`` (or
  :func:`set_native_enabled`) forces the reference.
- Triton GPU kernels (:mod:`elta_core.kernels.triton_ops`): FLSA forward and backward,
  the APDS row operation and the grid-search accumulation, for CUDA tensors when Triton
  is importable. They have only run under the interpreter: no GPU measurement shows them
  faster yet (``ELTA_TRITON_DEFAULT=0`` makes the reference the default).
  :func:`triton_available` says whether Triton imports. ``ELTA_TRITON=0`` (or
  :func:`set_triton_enabled`) forces the reference.
"""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = [
    "KernelStatus", "native_available", "native_enabled", "set_native_enabled",
    "set_triton_enabled", "triton_available", "triton_enabled",
]


class KernelStatus(NamedTuple):
    """Truthy when a kernel family can run; ``reason`` says why or why not."""

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _load_native():
    try:
        from elta_core.kernels import _native
    except ImportError as error:
        return None, KernelStatus(
            False,
            f"the native extension was not built (a pure-Python install, e.g. no C++ compiler or CMake at "
            f"install time): {error}",
        )
    threads = _native.max_threads()
    detail = f"OpenMP, {threads} threads" if _native.openmp_enabled() else "no OpenMP, 1 thread"
    return _native, KernelStatus(True, f"built ({detail})")


_NATIVE, _STATUS = _load_native()


def _switched_on(variable: str) -> bool:
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


_enabled = _switched_on("ELTA_NATIVE")
_triton_enabled = _switched_on("ELTA_TRITON")
_TRITON_STATUS: KernelStatus | None = None


def native_available() -> KernelStatus:
    """Whether the native CPU kernels were built; ``str()`` of the result says why or why not."""
    return _STATUS


def native_enabled() -> bool:
    """Built and not switched off."""
    return _STATUS.available and _enabled


def set_native_enabled(enabled: bool) -> None:
    """Switch the native kernels on or off for this process (off: the reference runs)."""
    global _enabled
    _enabled = bool(enabled)


def native_module():
    """The compiled module (``None`` when not built)."""
    return _NATIVE


def triton_available() -> KernelStatus:
    """Whether the Triton kernels can be imported (Triton and torch installed). Triton is
    imported on the first call only, never by ``import elta_core``."""
    global _TRITON_STATUS
    if _TRITON_STATUS is None:
        try:
            import triton

            from elta_core.kernels.triton_ops import apds, flsa  # noqa: F401
        except Exception as error:  # a broken Triton install must not break the reference
            _TRITON_STATUS = KernelStatus(False, f"Triton kernels unavailable: {type(error).__name__}: {error}")
        else:
            mode = ", interpreter (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else ""
            _TRITON_STATUS = KernelStatus(True, f"Triton {triton.__version__}{mode}")
    return _TRITON_STATUS


def triton_enabled() -> bool:
    """Triton importable and not switched off (it is still used for CUDA tensors only)."""
    return _triton_enabled and triton_available().available


def set_triton_enabled(enabled: bool) -> None:
    """Switch the Triton kernels on or off for this process (off: the reference runs)."""
    global _triton_enabled
    _triton_enabled = bool(enabled)
