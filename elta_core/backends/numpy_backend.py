"""NumPy backend: the reference that every other backend is tested against."""

from __future__ import annotations

from typing import Any

import numpy as np

from elta_core.backends.base import Backend


def numpy_generator(seed: Any) -> np.random.Generator:
    """A NumPy generator from None, an int, a NumPy generator or a torch generator."""
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    if type(seed).__module__ == "torch" and type(seed).__name__ == "Generator":
        # Derive a NumPy stream from the torch generator so that it advances too.
        import torch

        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=seed).item()))
    raise ValueError(
        "seed: expected None, an int, a numpy.random.Generator or a torch.Generator, "
        f"got {type(seed).__name__}"
    )


class NumpyBackend(Backend):
    name = "numpy"
    tensor_types = (np.ndarray, np.generic)

    def to_numpy(self, x):
        return np.asarray(x)

    def from_numpy(self, array, like):
        return np.asarray(array)

    def constant(self, values, like):
        return np.asarray(values, dtype=np.asarray(like).dtype if self.is_floating(like) else np.float64)

    def compute_dtype_of(self, x):
        x = np.asarray(x)
        if x.dtype in (np.float32, np.float64):
            return x
        if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"expected a numeric array, got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"expected a real array, got dtype {x.dtype}")
        # float16, ints and any custom float (ml_dtypes bfloat16) compute in float32.
        return x.astype(np.float32)

    def cast_like(self, x, like):
        return np.asarray(x).astype(np.asarray(like).dtype, copy=False)

    def is_floating(self, x):
        return np.issubdtype(np.asarray(x).dtype, np.floating)

    def is_integer(self, x):
        return np.issubdtype(np.asarray(x).dtype, np.integer)

    def stop_gradient(self, x):
        return x

    def needs_gradient(self, x):
        return False

    def with_gradient(self, value, wrt, gradient):
        return value

    def all_finite_host(self, x):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            return True
        return bool(np.isfinite(x).all())

    def min_host(self, x):
        return float(np.min(x))

    def max_host(self, x):
        return float(np.max(x))

    abs = staticmethod(np.abs)
    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)
    maximum = staticmethod(np.maximum)
    where = staticmethod(np.where)
    isfinite = staticmethod(np.isfinite)
    all = staticmethod(np.all)

    def sigmoid(self, x):
        # exp(-|x|) never overflows; the two branches are the same function.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.asarray(x).dtype, copy=False)

    def sum(self, x, axis=None, keepdims=False):
        return np.sum(x, axis=axis, keepdims=keepdims)

    def mean(self, x, axis=None, keepdims=False):
        return np.mean(x, axis=axis, keepdims=keepdims)

    def max(self, x, axis=None, keepdims=False):
        return np.max(x, axis=axis, keepdims=keepdims)

    def min(self, x, axis=None, keepdims=False):
        return np.min(x, axis=axis, keepdims=keepdims)

    def argmax(self, x, axis):
        return np.argmax(x, axis=axis)

    def cumsum(self, x, axis):
        return np.cumsum(x, axis=axis)

    def softmax(self, x, axis):
        m = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=axis, keepdims=True)

    def reshape(self, x, shape):
        return np.reshape(x, shape)

    def transpose(self, x):
        return np.swapaxes(x, -1, -2)

    def concat(self, tensors, axis):
        return np.concatenate(tensors, axis=axis)

    def take(self, x, indices, axis=0):
        return np.take(x, indices, axis=axis)

    def index_set(self, x, indices, values):
        out = np.array(x, copy=True)
        out[indices] = values
        return out

    def put_rows(self, buffer, indices, values):
        buffer[indices] = values
        return buffer

    def argsort(self, x, axis=-1, descending=False):
        if descending:
            return np.argsort(-x, axis=axis, kind="stable")
        return np.argsort(x, axis=axis, kind="stable")

    def matmul(self, x, y):
        return np.matmul(x, y)

    def arange(self, n, like):
        return np.arange(n, dtype=np.int64)

    def searchsorted(self, sorted_sequence, values, right):
        return np.searchsorted(sorted_sequence, values, side="right" if right else "left")

    def bincount(self, x, weights, length):
        return np.bincount(x, weights=weights, minlength=length)[:length].astype(weights.dtype, copy=False)

    def gumbel(self, shape, like, seed):
        dtype = np.asarray(like).dtype if self.is_floating(like) else np.float64
        return numpy_generator(seed).gumbel(size=shape).astype(dtype)
