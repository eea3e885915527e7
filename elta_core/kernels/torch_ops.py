"""The native FLSA kernel as a torch autograd Function over CPU tensors. Under
``torch.compile`` the dispatch runs the reference instead (see
:mod:`elta_core.kernels.dispatch`), so no custom operator is registered.
"""

import torch

from elta_core.kernels import native_module


class NativeFLSA(torch.autograd.Function):
    """The FLSA loss [Eqs. 5, 6] of (B, D) CPU features; the kernel returns the gradient
    with the loss, which the backward scales (first-order gradients)."""

    @staticmethod
    def forward(ctx, features, scores):
        z = features.detach().contiguous()
        grad = torch.empty_like(z)
        loss = native_module().flsa_forward_backward(z, scores.detach().to(z.dtype).contiguous(), grad)
        ctx.save_for_backward(grad)
        return torch.tensor(loss, dtype=z.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad_loss * grad, None


def flsa_loss(features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return NativeFLSA.apply(features, scores)
