"""Fused kernels for the hot paths. The reference functions in :mod:`elta_core` stay the
definition; every kernel is tested against them and is used only where it wins.

- Native CPU kernels (C++17, nanobind, OpenMP), built by ``CMakeLists.txt`` at install
  time: the FLSA loss and gradient for small batches, the APDS row operation, and the
  grid-search accumulation. :func:`native_available` says whether they were built and,
  if not, why. Set ``ELTA_NATIVE=0`` (or call :func:`set_native_enabled`) to force the
  reference.
"""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["NativeStatus", "native_available", "native_enabled", "set_native_enabled"]


class NativeStatus(NamedTuple):
    """Truthy when the native extension is importable; ``reason`` says why not."""

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _load_native():
    try:
        from elta_core.kernels import _native
    except ImportError as error:
        return None, NativeStatus(
            False,
            f"the native extension was not built (a pure-Python install, e.g. no C++ compiler or CMake at "
            f"install time): {error}",
        )
    threads = _native.max_threads()
    detail = f"OpenMP, {threads} threads" if _native.openmp_enabled() else "no OpenMP, 1 thread"
    return _native, NativeStatus(True, f"built ({detail})")


_NATIVE, _STATUS = _load_native()
_enabled = os.environ.get("ELTA_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def native_available() -> NativeStatus:
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
