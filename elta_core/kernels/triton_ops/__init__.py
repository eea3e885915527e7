"""Triton kernels for CUDA tensors (Liger-Kernel layout: each module holds its kernels
and the ``torch.autograd.Function`` over them; the core calls :func:`use_triton` and
then the module's entry point).

Dispatch is automatic and silent: CUDA tensors with Triton importable and enabled take
the kernels; CPU tensors, a missing Triton or ``ELTA_TRITON=0`` take the reference.
Under ``torch.compile`` the reference runs too, so that the compiler sees plain ops.
The checks of the core always run before a launch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["cpu_tensors_under_interpreter", "use_triton"]

_cpu_under_interpreter = False


def use_triton(backend_name: str, tensor: Any) -> bool:
    """Whether a tensor of this backend goes to the Triton kernels."""
    if backend_name != "torch":
        return False
    on_device = tensor.device.type == "cuda" or (_cpu_under_interpreter and tensor.device.type == "cpu")
    if not on_device:
        return False
    from elta_core.kernels import triton_enabled

    if not triton_enabled():
        return False
    import torch

    return not torch.compiler.is_compiling()


@contextmanager
def cpu_tensors_under_interpreter() -> Iterator[None]:
    """Also dispatch CPU tensors to the kernels, for tests under ``TRITON_INTERPRET=1``
    (the interpreter runs kernels on CPU tensors). Never needed on a GPU."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("cpu_tensors_under_interpreter: set TRITON_INTERPRET=1 before Triton is imported")
    global _cpu_under_interpreter
    previous, _cpu_under_interpreter = _cpu_under_interpreter, True
    try:
        yield
    finally:
        _cpu_under_interpreter = previous
