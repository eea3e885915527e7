"""torch custom operators over the native CPU kernels (``torch.library``), so that autograd
works and ``torch.compile`` traces around them as single opaque ops.

Imported only from the torch path; it imports torch at module level because the
operator schema is inferred from the annotations.
"""

import torch

from elta_core.kernels import native_module


@torch.library.custom_op("elta::flsa_forward", mutates_args=())
def flsa_forward(features: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dloss/dfeatures) of the FLSA loss [Eqs. 5, 6] for (B, D) CPU features."""
    z = features.detach().contiguous()
    grad = torch.empty_like(z)
    loss = native_module().flsa_forward_backward(z, scores.detach().to(z.dtype).contiguous(), grad)
    return torch.tensor(loss, dtype=z.dtype), grad


@flsa_forward.register_fake
def _(features, scores):
    return features.new_empty(()), torch.empty_like(features)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, grad_of_grad):
    (grad,) = ctx.saved_tensors
    return grad_loss * grad, None


flsa_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerFLSA(torch.autograd.Function):
    """The same kernel without the custom-op dispatcher, whose Python overhead (~0.3 ms)
    dwarfs the kernel at the small batches where it is used."""

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
    """The FLSA loss, differentiable w.r.t. ``features`` (first-order gradients). Under
    ``torch.compile`` it is the ``elta::flsa_forward`` custom op; eagerly, a plain
    autograd Function over the same kernel."""
    if torch.compiler.is_compiling():
        return flsa_forward(features, scores)[0]
    return _EagerFLSA.apply(features, scores)
