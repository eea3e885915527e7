"""torch backend: CPU and CUDA tensors, autograd flows through every op."""

from __future__ import annotations

import numpy as np
import torch

from elta_core.backends.base import Backend
from elta_core.backends.numpy_backend import numpy_generator


class _KnownGradient(torch.autograd.Function):
    """Returns ``value``; backward gives ``grad_output * gradient`` to ``wrt``."""

    @staticmethod
    def forward(ctx, wrt, value, gradient):
        ctx.save_for_backward(gradient)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        return grad_output * gradient, None, None


class TorchBackend(Backend):
    name = "torch"
    tensor_types = (torch.Tensor,)

    def to_numpy(self, x):
        if x.is_meta:
            raise ValueError("a tensor on the meta device has shapes but no values to read")
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()

    def from_numpy(self, array, like):
        return torch.from_numpy(np.ascontiguousarray(array)).to(like.device)

    def constant(self, values, like):
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return torch.as_tensor(values, dtype=dtype, device=like.device)

    def compute_dtype_of(self, x):
        if x.dtype in (torch.float32, torch.float64):
            return x
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"expected a real numeric tensor, got dtype {x.dtype}")
        return x.float()

    def cast_like(self, x, like):
        return x.to(like.dtype)

    def is_floating(self, x):
        return x.is_floating_point()

    def is_integer(self, x):
        return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool

    def stop_gradient(self, x):
        return x.detach()

    def needs_gradient(self, x):
        return torch.is_grad_enabled() and x.requires_grad

    def with_gradient(self, value, wrt, gradient):
        if not self.needs_gradient(wrt):
            return value
        return _KnownGradient.apply(wrt, value.detach(), gradient.detach())

    def has_values(self, x):
        return not x.is_meta

    def defers(self, x):
        return x.device.type in ("cuda", "meta")

    def check_async(self, condition, message):
        if condition.device.type == "meta":  # shapes only: there are no values to check
            return True
        if condition.device.type != "cuda":
            return False
        torch._assert_async(condition, message)  # no host synchronisation on CUDA
        return True

    def all_finite_host(self, x):
        if not x.is_floating_point():
            return True
        return bool(torch.isfinite(x.detach()).all())

    def min_host(self, x):
        return float(x.detach().min())

    def max_host(self, x):
        return float(x.detach().max())

    def isfinite(self, x):
        return torch.isfinite(x)

    def all(self, x):
        return torch.all(x)

    def abs(self, x):
        return torch.abs(x)

    def exp(self, x):
        return torch.exp(x)

    def sqrt(self, x):
        return torch.sqrt(x)

    def sigmoid(self, x):
        return torch.sigmoid(x)

    def maximum(self, x, y):
        if not isinstance(y, torch.Tensor):
            return torch.clamp(x, min=y)
        return torch.maximum(x, y)

    def where(self, condition, x, y):
        return torch.where(condition, x, y)

    def sum(self, x, axis=None, keepdims=False):
        return torch.sum(x) if axis is None else torch.sum(x, dim=axis, keepdim=keepdims)

    def mean(self, x, axis=None, keepdims=False):
        return torch.mean(x) if axis is None else torch.mean(x, dim=axis, keepdim=keepdims)

    def max(self, x, axis=None, keepdims=False):
        return torch.amax(x) if axis is None else torch.amax(x, dim=axis, keepdim=keepdims)

    def min(self, x, axis=None, keepdims=False):
        return torch.amin(x) if axis is None else torch.amin(x, dim=axis, keepdim=keepdims)

    def argmax(self, x, axis):
        return torch.argmax(x, dim=axis)

    def cumsum(self, x, axis):
        return torch.cumsum(x, dim=axis)

    def softmax(self, x, axis):
        return torch.softmax(x, dim=axis)

    def reshape(self, x, shape):
        return torch.reshape(x, shape)

    def transpose(self, x):
        return torch.transpose(x, -1, -2)

    def concat(self, tensors, axis):
        return torch.cat(list(tensors), dim=axis)

    def take(self, x, indices, axis=0):
        return torch.index_select(x, axis, indices)

    def index_set(self, x, indices, values):
        return x.index_put((indices,), values.to(x.dtype))

    def put_rows(self, buffer, indices, values):
        return buffer.index_copy_(0, indices, values.to(buffer.dtype))

    def argsort(self, x, axis=-1, descending=False):
        return torch.argsort(x, dim=axis, descending=descending, stable=True)

    def matmul(self, x, y):
        # The core's matmuls are loss arithmetic (label scores, FLSA's similarities): in the
        # inputs' own precision, never autocast's half one (the model's forward keeps it).
        if _autocast_on(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return torch.matmul(x, y)
        return torch.matmul(x, y)

    def arange(self, n, like):
        return torch.arange(n, device=like.device)

    def searchsorted(self, sorted_sequence, values, right):
        return torch.searchsorted(sorted_sequence, values.contiguous(), right=right)

    def bincount(self, x, weights, length):
        out = torch.zeros(length, dtype=weights.dtype, device=weights.device)
        return out.index_add_(0, x, weights)

    def gumbel(self, shape, like, seed):
        dtype = like.dtype if like.is_floating_point() else torch.float32
        if type(seed).__name__ == "SeedGenerator" and type(seed).__module__.startswith("keras"):
            # Keras on its torch backend: its tensors are torch tensors
            from elta_core.backends.keras_backend import seed_generator_gumbel

            return seed_generator_gumbel(shape, seed).to(device=like.device, dtype=dtype)
        if seed is not None and not isinstance(seed, torch.Generator):
            # Ints and NumPy generators draw on the host, so that one int seed gives the
            # same pairs on NumPy, CPU and CUDA tensors alike.
            draws = torch.from_numpy(numpy_generator(seed).gumbel(size=shape))
            return draws.to(device=like.device, dtype=dtype)
        generator = seed
        device = generator.device if generator is not None else like.device
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        u = u.clamp(min=torch.finfo(torch.float64).tiny, max=1.0 - 2**-53)
        return (-torch.log(-torch.log(u))).to(device=like.device, dtype=dtype)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device autocast does not know (meta): it casts nothing there
        return False
