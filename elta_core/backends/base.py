"""The array operations that the equations of :mod:`elta_core` are written against.

A backend is stateless. Its methods take and return tensors of its own framework; the
only values that cross to the host are the ones named ``*_host`` (Python numbers or
bools), which the input checks use.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Tensor = Any


class Backend:
    """Interface of a backend. Subclasses implement every method."""

    name: str = "abstract"
    tensor_types: tuple[type, ...] = ()

    # -- identity and conversion -------------------------------------------------
    def is_tensor(self, x: Any) -> bool:
        return isinstance(x, self.tensor_types)

    def to_numpy(self, x: Tensor) -> np.ndarray:
        raise NotImplementedError

    def from_numpy(self, array: np.ndarray, like: Tensor) -> Tensor:
        """A tensor with the values of ``array`` on the device of ``like`` (dtype kept)."""
        raise NotImplementedError

    def constant(self, values: Sequence[float] | float, like: Tensor) -> Tensor:
        """A float tensor on the device and in the dtype of ``like``."""
        raise NotImplementedError

    def compute_dtype_of(self, x: Tensor) -> Tensor:
        """``x`` as a floating tensor of at least 32 bits (half types and ints go to float32)."""
        raise NotImplementedError

    def cast_like(self, x: Tensor, like: Tensor) -> Tensor:
        raise NotImplementedError

    def is_floating(self, x: Tensor) -> bool:
        raise NotImplementedError

    def is_integer(self, x: Tensor) -> bool:
        raise NotImplementedError

    def stop_gradient(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def needs_gradient(self, x: Tensor) -> bool:
        """Whether a gradient w.r.t. ``x`` will be asked for (autograd on and tracking ``x``)."""
        raise NotImplementedError

    def with_gradient(self, value: Tensor, wrt: Tensor, gradient: Tensor) -> Tensor:
        """``value`` (a scalar computed without autograd) whose gradient w.r.t. ``wrt`` is
        ``gradient`` (first order), for a loss whose gradient is known in closed form."""
        raise NotImplementedError

    # -- host-side checks --------------------------------------------------------
    def shape(self, x: Tensor) -> tuple[int, ...]:
        return tuple(int(d) for d in x.shape)

    def has_values(self, x: Tensor) -> bool:
        """False for a tensor that has a shape and a dtype but no values (torch's ``meta``
        device, for shape inference): host checks skip it, value-dependent results refuse it."""
        return True

    def defers(self, x: Tensor) -> bool:
        """Whether checks on ``x`` are scheduled on its device (see :meth:`check_async`)
        rather than read on the host."""
        return False

    def check_async(self, condition: Tensor, message: str) -> bool:
        """Schedule a check of the boolean scalar ``condition`` on the device without waiting
        for it (a failure surfaces at a later synchronisation, naming ``message``); True if
        scheduled, False if the caller should check on the host. Only accelerators defer."""
        return False

    def all_finite_host(self, x: Tensor) -> bool:
        raise NotImplementedError

    def min_host(self, x: Tensor) -> float:
        raise NotImplementedError

    def max_host(self, x: Tensor) -> float:
        raise NotImplementedError

    # -- elementwise -------------------------------------------------------------
    def isfinite(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def all(self, x: Tensor) -> Tensor:
        """A boolean scalar tensor: every element true (no host read)."""
        raise NotImplementedError

    def abs(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def exp(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sqrt(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sigmoid(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def maximum(self, x: Tensor, y: Tensor | float) -> Tensor:
        raise NotImplementedError

    def where(self, condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    # -- reductions --------------------------------------------------------------
    def sum(self, x: Tensor, axis: int | None = None, keepdims: bool = False) -> Tensor:
        raise NotImplementedError

    def mean(self, x: Tensor, axis: int | None = None, keepdims: bool = False) -> Tensor:
        raise NotImplementedError

    def max(self, x: Tensor, axis: int | None = None, keepdims: bool = False) -> Tensor:
        raise NotImplementedError

    def min(self, x: Tensor, axis: int | None = None, keepdims: bool = False) -> Tensor:
        raise NotImplementedError

    def argmax(self, x: Tensor, axis: int) -> Tensor:
        raise NotImplementedError

    def cumsum(self, x: Tensor, axis: int) -> Tensor:
        raise NotImplementedError

    def softmax(self, x: Tensor, axis: int) -> Tensor:
        raise NotImplementedError

    # -- shape and indexing ------------------------------------------------------
    def reshape(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        raise NotImplementedError

    def transpose(self, x: Tensor) -> Tensor:
        """Swap the last two axes."""
        raise NotImplementedError

    def concat(self, tensors: Sequence[Tensor], axis: int) -> Tensor:
        raise NotImplementedError

    def take(self, x: Tensor, indices: Tensor, axis: int = 0) -> Tensor:
        raise NotImplementedError

    def index_set(self, x: Tensor, indices: Tensor, values: Tensor) -> Tensor:
        """A copy of ``x`` with rows ``indices`` set to ``values`` (differentiable)."""
        raise NotImplementedError

    def put_rows(self, buffer: Tensor, indices: Tensor, values: Tensor) -> Tensor:
        """``buffer`` with rows ``indices`` set to ``values``, written in place where the
        framework allows (NumPy, torch: for a buffer outside autograd); returns it."""
        raise NotImplementedError

    def argsort(self, x: Tensor, axis: int = -1, descending: bool = False) -> Tensor:
        """A stable argsort."""
        raise NotImplementedError

    def matmul(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def arange(self, n: int, like: Tensor) -> Tensor:
        """Integer 0..n-1 on the device of ``like``."""
        raise NotImplementedError

    def searchsorted(self, sorted_sequence: Tensor, values: Tensor, right: bool) -> Tensor:
        raise NotImplementedError

    def bincount(self, x: Tensor, weights: Tensor, length: int) -> Tensor:
        raise NotImplementedError

    # -- randomness --------------------------------------------------------------
    def gumbel(self, shape: tuple[int, ...], like: Tensor, seed: Any) -> Tensor:
        """Finite standard Gumbel draws in the float dtype and on the device of ``like``.

        ``seed`` is None (the framework's global generator), an int, or a generator
        object of a framework this backend knows.
        """
        raise NotImplementedError
