"""The choices of a training loop that the command line offers, defined once and
importable without a framework: the precisions and the learning-rate schedules (the torch
loop, :mod:`elta_core.adapters.torch.loop`, runs them; ``elta train --help`` lists them)."""

from __future__ import annotations

import math
from typing import Callable

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def check_lr_schedule(schedule: str) -> str:
    """``schedule`` if it is one of :data:`LR_SCHEDULES`, else a ``ValueError`` naming it."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    return schedule


def lr_factor(schedule: str, epochs: int) -> Callable[[int], float]:
    """The factor of the base learning rate in each epoch (0-based) of ``epochs``:
    ``"constant"`` 1; ``"cosine"`` ``(1 + cos(pi * epoch / epochs)) / 2``, from 1 in the
    first epoch down to near 0 in the last (never 0: every epoch trains). A function of
    the epoch alone, so a resumed run follows the uninterrupted run's schedule."""
    check_lr_schedule(schedule)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
    if schedule == "constant":
        return lambda epoch: 1.0
    return lambda epoch: (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0
