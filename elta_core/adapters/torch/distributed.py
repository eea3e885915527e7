"""Collectives for DDP runs: a batch gathered with gradients (``flsa_scope="global"``),
rows gathered in order (sharded prediction), decisions taken on rank 0 and shared. Each
is the identity in a single process."""

from __future__ import annotations

import gc
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, the process that writes files and shows progress (True without DDP)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def on_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only; every rank returns its result, or raises its error
    (so that a refused input stops every rank instead of leaving them waiting)."""
    result, error = None, None
    if is_main():
        try:
            result = compute()
        except Exception as caught:  # noqa: BLE001 - re-raised on every rank below
            error = caught
    if is_distributed():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise error
    return result


def shard(length: int) -> range:
    """This rank's contiguous block of ``range(length)``: blocks in rank order cover it
    exactly once (no padding duplicates; a block may be empty)."""
    r, w = rank(), world_size()
    return range(length * r // w, length * (r + 1) // w)


def communication_device() -> torch.device:
    """Where collectives' tensors live: this process's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` (counts and even trailing shapes of empty blocks may
    differ), concatenated in rank order, on the CPU; no gradient."""
    if not is_distributed():
        return tensor
    shapes = gather_objects(tuple(tensor.shape))
    counts = [shape[0] if shape else 0 for shape in shapes]
    trailing = next((tuple(shape[1:]) for shape, count in zip(shapes, counts) if count), tuple(tensor.shape[1:]))
    widest = max(counts)
    if widest == 0:
        return tensor.new_zeros((0, *trailing)).cpu()
    padded = tensor.new_zeros((widest, *trailing))
    if counts[rank()]:
        padded[: counts[rank()]] = tensor
    padded = padded.to(communication_device())
    pieces = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[:count].cpu() for piece, count in zip(pieces, counts)])


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


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order; ``[value]`` without DDP. For
    :meth:`elta_core.metrics.MetricAccumulator.sync`."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def is_main_by_environment() -> bool:
    """Rank 0 as torchrun's environment says (``RANK``), before the process group exists."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (its environment)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ...): NCCL on CUDA, each process on the GPU of its
    ``LOCAL_RANK``; gloo on the CPU. Returns this process's device. Without torchrun (or
    when the group exists already) nothing changes."""
    import os

    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device


def shutdown() -> None:
    """Leave the process group joined by :func:`init_from_environment`, and end its threads
    here, while the interpreter is whole.

    ``destroy_process_group`` only unregisters the group: a ``DistributedDataParallel``
    module that still holds it (an ``ELTAWrapper``'s hooks make a reference cycle, which
    only the garbage collector frees) keeps gloo's threads running until the interpreter's
    own teardown, where a rank aborted now and then (``terminate called without an active
    exception``). So the cycles are collected first, and the group is destroyed with no
    other reference left (docs/design.md, "Leaving the process group")."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
