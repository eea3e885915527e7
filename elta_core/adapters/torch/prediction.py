"""Prediction with the torch adapter: a model's outputs over a loader, in eval mode, and
over a whole dataset, sharded across DDP ranks and gathered back in order."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from elta_core.adapters.torch.distributed import gather_rows, is_distributed, is_main, shard
from elta_core.adapters.torch.loop import progress_bar, split_batch
from elta_core.adapters.torch.modules import device_of
from elta_core.adapters.torch.wrapper import ELTAWrapper


@torch.no_grad()
def predict(
    wrapper: ELTAWrapper,
    loader: Iterable,
    *,
    progress: bool = True,
    desc: str = "predict",
    raw: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stream ``loader`` through the model in eval mode; return (logits (N, C), labels or None).

    APDS needs logits over the rating levels: a ``"probs"`` model gives ``log(probs)``
    (the same softmax); a scalar ``"score"`` model raises ``ValueError``. With ``raw``
    the model's outputs are returned as they are, of any kind (for evaluation). A
    DistributedDataParallel model predicts through its module: inference needs no
    gradient synchronisation, and ranks may predict different numbers of batches.
    """
    model = wrapper.model.module if isinstance(wrapper.model, DistributedDataParallel) else wrapper.model
    device = device_of(model)
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        for batch in progress_bar(loader, progress, desc=desc, unit="batch"):
            x, y = split_batch(batch)
            out = model(x.to(device) if isinstance(x, torch.Tensor) else x)
            out = getattr(out, "logits", out)  # a Hugging Face model's output
            kind = "raw" if raw else wrapper.output_kind(out)
            if kind == "score":
                raise ValueError(
                    "model: APDS needs a distribution head (logits over C rating levels) but the model "
                    "regresses a scalar score. Turn its head into one with "
                    "elta_core.adapters.torch.to_distribution_head(model, head, num_bins) and train it "
                    "with distribution or score labels."
                )
            out = out.float()
            outputs.append((torch.log(out.clamp_min(1e-12)) if kind == "probs" else out).cpu())
            if y is not None:
                labels.append(torch.as_tensor(y).float().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(outputs) if outputs else torch.zeros(0, 0)
    return logits, (torch.cat(labels) if labels else None)


def predict_dataset(
    wrapper: ELTAWrapper,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "predict",
    raw: bool = False,
    loader_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`predict` over a whole dataset, in its order. Under DDP each rank predicts a
    contiguous block and every rank gets all rows, gathered in order without the
    duplicates a ``DistributedSampler`` pads with; equal to one process's result."""
    options = {k: v for k, v in (loader_kwargs or {}).items() if k not in ("shuffle", "sampler", "generator")}
    if not is_distributed():
        return predict(wrapper, DataLoader(dataset, batch_size=batch_size, **options), progress=progress, desc=desc,
                       raw=raw)
    part = Subset(dataset, shard(len(dataset)))
    outputs, labels = predict(wrapper, DataLoader(part, batch_size=batch_size, **options),
                              progress=progress and is_main(), desc=desc, raw=raw)
    outputs = gather_rows(outputs)
    labels = gather_rows(labels if labels is not None else torch.zeros(0))
    return outputs, (labels if len(labels) else None)
