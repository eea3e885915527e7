"""Triton kernels for CUDA tensors (Liger-Kernel layout: each module holds its kernels
and the ``torch.autograd.Function`` over them). Which implementation runs is decided in
:mod:`elta_core.kernels.dispatch`; the core's checks always run before a launch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["compute_dtype", "cpu_tensors_under_interpreter", "device_scalars"]


def compute_dtype(dtype):
    """The accumulation dtype of the kernels: float64 for float64 inputs, else float32."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def device_scalars(like, dtype, *values: float):
    """``values`` as a 1-D tensor of ``dtype`` on ``like``'s device, one fill each (no copy
    from the host, so no synchronisation). The kernels read their float scalars from it: a
    Python float argument reaches a kernel as float32, even a float64 one."""
    import torch

    return torch.cat([torch.full((1,), float(value), device=like.device, dtype=dtype) for value in values])


@contextmanager
def cpu_tensors_under_interpreter() -> Iterator[None]:
    """Also dispatch CPU tensors to the kernels, for tests under ``TRITON_INTERPRET=1``
    (the interpreter runs kernels on CPU tensors). Never needed on a GPU."""
    import os

    from elta_core.kernels import dispatch

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("cpu_tensors_under_interpreter: set TRITON_INTERPRET=1 before Triton is imported")
    previous, dispatch._cpu_under_interpreter = dispatch._cpu_under_interpreter, True
    try:
        yield
    finally:
        dispatch._cpu_under_interpreter = previous
