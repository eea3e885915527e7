"""The pseudo-labelled part of round 2's training set, and the fingerprint that tells a
saved self-training stage whether the data it was computed from is still the same."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset, TensorDataset

from elta_core.adapters.torch.loop import split_batch
from elta_core.run_state import fingerprint


class PseudoLabelledDataset(Dataset):
    """Items ``(x, pseudo_label)`` for the selected ``indices`` of an unlabelled dataset."""

    def __init__(self, unlabelled: Dataset, indices: Sequence[int] | torch.Tensor, labels: torch.Tensor):
        indices = torch.as_tensor(indices, dtype=torch.long)
        if len(indices) != len(labels):
            raise ValueError(f"labels: expected {len(indices)} pseudo-labels to match indices, got {len(labels)}")
        self.unlabelled, self.indices, self.labels = unlabelled, indices, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        x, _ = split_batch(self.unlabelled[int(self.indices[k])])
        return x, self.labels[k]


def dataset_fingerprint(dataset: Dataset) -> str:
    """A fingerprint of a data set, to tell whether a stage computed from it is current:
    its own ``fingerprint()`` where it has one (the image datasets hash their label table),
    the tensors of a ``TensorDataset``, and otherwise its length and up to 64 evenly spaced
    items (a heuristic: give your dataset a ``fingerprint()`` method to be exact)."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return str(own())
    if isinstance(dataset, TensorDataset):
        return fingerprint(list(dataset.tensors))
    size = len(dataset)
    rows = sorted(set(int(k) for k in torch.linspace(0, max(size - 1, 0), min(size, 64)).round().tolist()))
    return fingerprint([type(dataset).__qualname__, size] + [list(split_batch(dataset[k])) for k in rows])


def is_score_label(item: Any) -> bool:
    """Whether a dataset item's label is one score (not a distribution)."""
    _, label = split_batch(item)
    return label is not None and torch.as_tensor(label).numel() == 1
