"""Gathering a batch across DDP ranks with gradients, for ``flsa_scope="global"``."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (rows may differ per rank) from all ranks, in rank order.

    Gradients flow back to each rank's own rows: the backward of the autograd all-gather
    sums the gradients of every rank's copy, so with DDP's gradient averaging a loss
    computed identically on every rank gets exactly its single-process gradient.
    """
    if not is_distributed():
        return tensor
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_rows = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(all_rows, rows)
    counts = [int(r.item()) for r in all_rows]
    widest = max(counts)
    if tensor.shape[0] < widest:
        padding = tensor.new_zeros((widest - tensor.shape[0],) + tuple(tensor.shape[1:]))
        tensor = torch.cat([tensor, padding])
    gathered = _GatherRows.apply(tensor)
    return torch.cat([piece[:count] for piece, count in zip(gathered.split(widest), counts)])


class _GatherRows(torch.autograd.Function):
    """All ranks' equally sized tensors, concatenated in rank order; the backward sums
    every rank's gradient of the result and returns this rank's rows. Public collectives
    only (``torch.distributed.nn.functional.all_gather`` is deprecated)."""

    @staticmethod
    def forward(ctx, tensor):
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_objects(value):
    """Every process's ``value`` (picklable), in rank order; ``[value]`` without DDP. For
    :meth:`elta_core.metrics.MetricAccumulator.sync`."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
