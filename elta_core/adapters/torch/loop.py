"""The training loop of the torch adapter: the loaders, the epochs, the precision.

:func:`fit` runs ``L = L_s`` per labelled batch through the wrapper (plus ``L_u`` on
pseudo-labelled batches for Eq. 10 with separate batches), sets each loader's epoch so
that shuffling and augmentation are seeded per epoch, and averages each epoch's loss over
every rank's steps under DDP. :func:`training_loader` makes the order of a run
independent of how its global batch is split over processes.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from elta_core.adapters.torch.distributed import communication_device, is_distributed, is_main, rank, world_size
from elta_core.adapters.torch.modules import device_of
from elta_core.adapters.torch.wrapper import ELTAWrapper
from elta_core.training_options import PRECISIONS

Precision = Literal["fp32", "bf16", "fp16"]
BASE_LR = "elta_base_lr"  # the param group's learning rate before the schedule (kept in its state_dict)


def progress_bar(iterable: Iterable, enabled: bool, **kwargs):
    """``iterable`` under a tqdm bar when ``enabled``; the bar never iterates it itself."""
    if not enabled:
        return iterable
    # tqdm.std, not tqdm.auto: the asyncio variant calls iter() on the loader in its
    # constructor, which draws from the loader's generator and changes the results.
    from tqdm.std import tqdm

    return tqdm(iterable, **kwargs)


def make_optimizer(optimizer_class: type[torch.optim.Optimizer], parameters: Iterable[Any],
                   **options: Any) -> torch.optim.Optimizer:
    """``optimizer_class(parameters, **options)`` with its fused kernel where the class has
    one and every parameter allows it (floating point, on a device the kernel supports),
    else its default implementation. The update is the same up to rounding; the fused
    step of AdamW on resnet18 is about 8 times faster on the CPU (``benchmarks/README.md``)."""
    parameters = list(parameters)
    if "fused" in options or "fused" not in inspect.signature(optimizer_class).parameters:
        return optimizer_class(parameters, **options)
    try:
        return optimizer_class(parameters, fused=True, **options)
    except RuntimeError:  # a parameter on a device or of a dtype the fused kernel does not take
        return optimizer_class(parameters, **options)


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group.setdefault(BASE_LR, group["lr"])
        group["lr"] = group[BASE_LR] * factor


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(x, y)`` of a batch or item: a list or tuple gives its first two entries, anything else is ``x`` alone."""
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def training_loader(dataset: Dataset, batch_size: int, *, seed: int | None = None, drop_last: bool | None = None,
                    **loader_kwargs: Any) -> DataLoader:
    """A shuffling DataLoader. With a ``seed`` (and always under DDP) the order comes from a
    ``DistributedSampler``: a permutation seeded by ``seed + epoch`` (:func:`fit` sets the
    epoch), of which each of the W ranks takes every W-th sample. One step then sees a
    global batch of ``batch_size * W`` samples, the same samples as one process's batch of
    that size with the same seed, so a run's result does not depend on how its global
    batch is split. Without a seed in one process: ``shuffle=True`` (a ``generator`` in
    ``loader_kwargs`` sets the order). The last incomplete batch is dropped when there is
    more than one batch, unless ``drop_last`` says otherwise; a last batch of a single
    sample is dropped always (BatchNorm cannot train on one sample, and one sample is no
    batch statistic)."""
    if seed is None and not is_distributed():
        return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                          drop_last=_drop_last(len(dataset), batch_size, drop_last), **loader_kwargs)
    loader_kwargs.pop("generator", None)
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed or 0,
                                 drop_last=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      drop_last=_drop_last(sampler.num_samples, batch_size, drop_last), **loader_kwargs)


def _drop_last(samples: int, batch_size: int, drop_last: bool | None) -> bool:
    """Whether the last incomplete batch of ``samples`` is dropped (see :func:`training_loader`)."""
    more_than_one = samples > batch_size
    if more_than_one and samples % batch_size == 1:
        return True
    return more_than_one if drop_last is None else drop_last


def fit(
    wrapper: ELTAWrapper,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int = 1,
    pseudo_loader: Iterable | None = None,
    progress: bool = True,
    desc: str = "train",
    first_epoch: int = 0,
    precision: Precision = "fp32",
    epoch_terms: list[dict[str, float]] | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    epoch_end: Callable[[int, float], bool | None] | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> list[float]:
    """A plain training loop: ``L = L_s`` per labelled batch, plus ``L_u`` (the task loss on
    a pseudo-labelled batch, Eq. 10) when ``pseudo_loader`` is given. Returns the mean loss
    of each epoch (over every rank's steps under DDP). A loader whose sampler or dataset has ``set_epoch`` (a
    ``DistributedSampler``, an ``ImageLabelDataset`` with a seed) gets epoch
    ``first_epoch + k``, so each epoch is shuffled and augmented anew. ``precision``
    ``"bf16"`` or ``"fp16"`` runs the forward under autocast (fp16 with a gradient scaler);
    the losses are computed in float32 either way. ``epoch_terms``, a list, gets each
    epoch's mean of every term of the loss (``task_loss``, ``flsa_loss``, each peer's,
    ``pseudo_loss`` for ``L_u``), summed on the device and read once per epoch.
    ``lr_schedule`` (e.g. :func:`~elta_core.training_options.lr_factor`) scales each param
    group's learning rate in epoch ``first_epoch + k`` by ``lr_schedule(first_epoch + k)``.
    ``epoch_end(epochs_done, mean_loss)`` runs after each epoch (``epochs_done`` counts
    from 0 before ``first_epoch``; it may validate, keep the best, checkpoint) and stops the
    training by returning True. ``grad_scaler``: fp16's gradient scaler, to carry its scale
    across calls or keep it in a checkpoint (default: a new one for this call)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = device_of(wrapper.model)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = grad_scaler or torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    history = []
    if pseudo_loader is not None and len(pseudo_loader) == 0:
        raise ValueError("pseudo_loader: expected pseudo-labelled batches, got an empty loader")
    for epoch in range(epochs):
        wrapper.train()  # again each epoch: epoch_end may have evaluated
        if lr_schedule is not None:
            _set_lr(optimizer, lr_schedule(first_epoch + epoch))
        for each in (loader, pseudo_loader):
            _set_epoch(getattr(each, "sampler", None), first_epoch + epoch)
            _set_epoch(getattr(each, "dataset", None), first_epoch + epoch)
        pseudo_batches = iter(pseudo_loader) if pseudo_loader is not None else None
        total, steps, terms = 0.0, 0, {}
        label = f"{desc} epoch {first_epoch + epoch + 1}/{first_epoch + epochs}" if epochs > 1 or first_epoch else desc
        for batch in progress_bar(loader, progress and is_main(), desc=label, unit="batch"):
            x, y = split_batch(batch)
            if y is None:
                raise ValueError("loader: expected (x, y) batches with labels, got batches without labels")
            try:
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    out = wrapper(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                    loss, parts = out.loss, {"task_loss": out.task_loss, "flsa_loss": out.flsa_loss,
                                             **{f"{name}_loss": v for name, v in out.peer_losses.items()}}
                    if pseudo_batches is not None:
                        try:
                            xu, yu = next(pseudo_batches)
                        except StopIteration:
                            pseudo_batches = iter(pseudo_loader)
                            xu, yu = next(pseudo_batches)
                        parts["pseudo_loss"] = wrapper.unlabelled_loss(xu.to(device), yu.to(device))
                        loss = loss + parts["pseudo_loss"]
            except FloatingPointError as error:
                raise FloatingPointError(f"{label}: diverged at step {steps + 1}: {error}") from None
            value = float(loss.detach())  # read every step anyway; on a GPU the wrapper's own check is deferred
            if not math.isfinite(value):
                raise FloatingPointError(f"{label}: diverged at step {steps + 1}: the loss is {value}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total, steps = total + value, steps + 1
            if epoch_terms is not None:
                for name, part in parts.items():
                    terms[name] = terms.get(name, 0) + part.detach().double()
        if wrapper.wants_feature_pass:  # FDS's statistics from a pass of their own, as its authors collect them
            for batch in progress_bar(loader, progress and is_main(), desc=f"{label}: features", unit="batch"):
                x, y = split_batch(batch)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    wrapper.observe_features(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        wrapper.end_epoch()
        names = sorted(terms)
        sums = torch.tensor([total, float(steps), *(float(terms[n]) for n in names)], dtype=torch.float64)
        if is_distributed():  # the epoch's means over every rank's steps
            sums = sums.to(communication_device())
            torch.distributed.all_reduce(sums)
            sums = sums.cpu()
        total, steps = float(sums[0]), int(sums[1])
        history.append(total / max(steps, 1))
        if epoch_terms is not None:
            epoch_terms.append({name: float(sums[2 + k]) / max(steps, 1) for k, name in enumerate(names)})
        if epoch_end is not None and epoch_end(first_epoch + epoch + 1, history[-1]):
            break
    return history


def _set_epoch(part: Any, epoch: int) -> None:
    """``set_epoch`` on a sampler or dataset, and on the datasets inside a ``ConcatDataset``
    or ``Subset`` (whose epoch would otherwise stay where an earlier run left it)."""
    set_epoch = getattr(part, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    for inner in getattr(part, "datasets", None) or [getattr(part, "dataset", None)]:
        if isinstance(inner, Dataset):
            _set_epoch(inner, epoch)
