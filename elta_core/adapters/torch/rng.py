"""Snapshots of every random number generator a training run draws from, so that a run
resumed from a checkpoint continues exactly as the uninterrupted run (bit for bit on CPU).

A snapshot holds torch's global CPU generator (and CUDA's, where present), NumPy's and
Python's global generators, and any ``torch.Generator`` given (a DataLoader's, which
fixes the data order and the workers' seeds; the TFA pairs' generator). It holds tensors
and plain Python values only, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["restore", "snapshot"]


def snapshot(generators: Sequence[torch.Generator | None] = ()) -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _python_state(random.getstate()),
        "generators": [None if g is None else g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], generators: Sequence[torch.Generator | None] = ()) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["generators"]
    if len(saved) != len(generators):
        raise ValueError(f"generators: the snapshot holds {len(saved)} generators, {len(generators)} were given")
    for generator, generator_state in zip(generators, saved):
        if (generator is None) != (generator_state is None):
            raise ValueError("generators: the snapshot was taken with another set of seeded generators")
        if generator is not None:
            generator.set_state(generator_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
