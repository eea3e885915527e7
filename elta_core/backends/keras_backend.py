"""Keras 3 backend: TensorFlow and JAX tensors through ``keras.ops`` (torch tensors,
Keras's torch backend included, go to the torch backend).

It is registered for the framework Keras runs on, and claims that framework's tensors
only when Keras is imported. Gradients flow through every op; a loss whose gradient is
known in closed form is attached with the ``stop_gradient`` identity (no custom-gradient
API, so the same code runs under ``tf.GradientTape`` and ``jax.grad``).
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

from elta_core.backends.base import Backend
from elta_core.backends.numpy_backend import numpy_generator


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def seed_generator_gumbel(shape: tuple[int, ...], seed: keras.random.SeedGenerator):
    """float32 standard Gumbel draws from a ``keras.random.SeedGenerator`` (a tensor of
    the Keras backend's framework; the generator's state advances, also under jit)."""
    tiny = float(np.finfo(np.float32).tiny)
    u = keras.random.uniform(shape, minval=tiny, maxval=1.0, dtype="float32", seed=seed)
    return -ops.log(-ops.log(u))


class KerasBackend(Backend):
    name = "keras"

    def is_tensor(self, x):
        if keras.backend.backend() not in ("tensorflow", "jax") or isinstance(x, (np.ndarray, np.generic)):
            return False
        return ops.is_tensor(x) or type(x).__name__ in ("ResourceVariable", "Variable") or isinstance(
            x, keras.Variable)

    def to_numpy(self, x):
        x = ops.convert_to_numpy(x)
        return x.astype(np.float32) if x.dtype.kind == "V" or str(x.dtype) == "bfloat16" else x

    def from_numpy(self, array, like):
        return ops.convert_to_tensor(np.ascontiguousarray(array))

    def constant(self, values, like):
        dtype = _dtype(like) if self.is_floating(like) else "float32"
        return ops.convert_to_tensor(np.asarray(values, dtype=np.float64), dtype=dtype)

    def compute_dtype_of(self, x):
        if isinstance(x, keras.Variable):
            x = x.value
        dtype = _dtype(x)
        if dtype in ("float32", "float64"):
            return x
        if dtype == "bool" or dtype.startswith("complex"):
            raise ValueError(f"expected a real numeric tensor, got dtype {dtype}")
        return ops.cast(x, "float32")

    def cast_like(self, x, like):
        return ops.cast(x, _dtype(like))

    def is_floating(self, x):
        return "float" in _dtype(x)

    def is_integer(self, x):
        return "int" in _dtype(x)

    def stop_gradient(self, x):
        return ops.stop_gradient(x)

    def needs_gradient(self, x):
        if keras.backend.backend() == "jax":
            import jax

            return isinstance(x, jax.core.Tracer)
        return True  # TensorFlow cannot tell whether a tape watches x

    def with_gradient(self, value, wrt, gradient):
        # value + <g, wrt - stop(wrt)>: the same value (x - x is exactly 0), gradient g.
        zero = ops.sum(ops.stop_gradient(gradient) * (wrt - ops.stop_gradient(wrt)))
        return ops.stop_gradient(value) + ops.cast(zero, _dtype(value))

    def shape(self, x):
        shape = tuple(x.shape)
        if any(d is None for d in shape):
            raise ValueError(
                f"elta_core needs static shapes, got {shape}; under tf.function trace per batch shape "
                "(elta_core.adapters.keras does this for fit)"
            )
        return tuple(int(d) for d in shape)

    def all_finite_host(self, x):
        if not self.is_floating(x):
            return True
        return bool(ops.convert_to_numpy(ops.all(ops.isfinite(x))))

    def min_host(self, x):
        return float(ops.convert_to_numpy(ops.cast(ops.min(x), "float64" if _dtype(x) == "float64" else "float32")))

    def max_host(self, x):
        return float(ops.convert_to_numpy(ops.cast(ops.max(x), "float64" if _dtype(x) == "float64" else "float32")))

    def isfinite(self, x):
        return ops.isfinite(x)

    def all(self, x):
        return ops.all(x)

    def abs(self, x):
        return ops.abs(x)

    def exp(self, x):
        return ops.exp(x)

    def sqrt(self, x):
        return ops.sqrt(x)

    def sigmoid(self, x):
        return ops.sigmoid(x)

    def maximum(self, x, y):
        return ops.maximum(x, ops.cast(y, _dtype(x)) if not isinstance(y, (int, float)) else y)

    def where(self, condition, x, y):
        return ops.where(condition, x, y)

    def sum(self, x, axis=None, keepdims=False):
        return ops.sum(x, axis=axis, keepdims=keepdims)

    def mean(self, x, axis=None, keepdims=False):
        return ops.mean(x, axis=axis, keepdims=keepdims)

    def max(self, x, axis=None, keepdims=False):
        return ops.max(x, axis=axis, keepdims=keepdims)

    def min(self, x, axis=None, keepdims=False):
        return ops.min(x, axis=axis, keepdims=keepdims)

    def argmax(self, x, axis):
        return ops.argmax(x, axis=axis)

    def cumsum(self, x, axis):
        return ops.cumsum(x, axis=axis)

    def softmax(self, x, axis):
        return ops.softmax(x, axis=axis)

    def reshape(self, x, shape):
        return ops.reshape(x, shape)

    def transpose(self, x):
        return ops.swapaxes(x, -1, -2)

    def concat(self, tensors, axis):
        return ops.concatenate(list(tensors), axis=axis)

    def take(self, x, indices, axis=0):
        return ops.take(x, indices, axis=axis)

    def index_set(self, x, indices, values):
        return ops.scatter_update(x, ops.reshape(indices, (-1, 1)), ops.cast(values, _dtype(x)))

    def put_rows(self, buffer, indices, values):
        return self.index_set(buffer, indices, values)  # TensorFlow and JAX tensors are immutable: a copy

    def argsort(self, x, axis=-1, descending=False):
        # a stable sort of -x keeps equal keys in input order, as the other backends
        key = -x if descending else x
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # keras.ops.argsort is not stable on TensorFlow

            return tf.argsort(key, axis=axis, stable=True)
        return ops.argsort(key, axis=axis)

    def matmul(self, x, y):
        return ops.matmul(x, y)

    def arange(self, n, like):
        return ops.arange(n, dtype="int32")

    def searchsorted(self, sorted_sequence, values, right):
        return ops.searchsorted(sorted_sequence, values, side="right" if right else "left")

    def bincount(self, x, weights, length):
        return ops.segment_sum(weights, x, num_segments=length)

    def gumbel(self, shape, like, seed):
        dtype = _dtype(like) if self.is_floating(like) else "float32"
        if isinstance(seed, keras.random.SeedGenerator):
            return ops.cast(seed_generator_gumbel(shape, seed), dtype)
        if seed is None:
            raise ValueError(
                "seed: Keras tensors need a seed (an int, a numpy.random.Generator or a "
                "keras.random.SeedGenerator); the global generator cannot be traced"
            )
        # Ints and NumPy generators draw on the host: the same int gives the same pairs on
        # every backend (eager code only: under jit/tf.function use a SeedGenerator).
        return ops.convert_to_tensor(numpy_generator(seed).gumbel(size=shape), dtype=dtype)
