"""What a command runs on: the device, torch's threads and the loader's worker processes
(sharing this process's cores), progress bars, and writing on rank 0 alone under torchrun."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from elta_core.adapters.torch import distributed as ddp


def device_named(name: str | None) -> torch.device:
    """``--device``: the device it names, refused where this machine has none such;
    without one a CUDA device where there is one, else the CPU."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device: {name} is not available on this machine ({torch.cuda.device_count()} CUDA "
                         "device(s)); use --device cpu")
    return device


def check_out_folder(out: str) -> Path:
    """``--out`` as a path, refused where it names a file."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out: {folder} is a file; give a directory")
    return folder


def output_folder(path: str) -> Path:
    """The folder ``--out`` names, made where it is missing, refused where it is a file."""
    folder = check_out_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_on_main(write, *arguments) -> None:
    """``write(*arguments)`` on rank 0 alone (every process under torchrun holds the result)."""
    if ddp.is_main():
        write(*arguments)


@contextlib.contextmanager
def torch_threads(settings: Any) -> Iterator[None]:
    """torch's thread count for the command (:func:`cpu_budget`), restored after it (compare
    and the tests call the commands in their own process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_budget(settings.workers, settings.threads)[1])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers() -> int:
    """This machine's cores (those this process may use), shared among the processes
    torchrun starts on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpu_budget(workers: int | None, threads: int | None) -> tuple[int, int]:
    """Loader workers and torch threads for one process, so that together they use this
    process's share of the cores and no more: by default half the cores compute (torch
    threads) and the rest load images. The threads never follow ``workers``: a result
    depends on the thread count in its last digits, and must not on the worker count."""
    cores = default_workers()
    if threads is None:
        threads = max(1, cores // 2)
    if workers is None:
        workers = max(0, cores - threads)
    return workers, threads


def loader_options(workers: int | None, device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """DataLoader options for training: ``workers`` processes (None: see :func:`cpu_budget`),
    pinned memory for a GPU, two batches prefetched per worker. Workers are not persistent:
    each epoch's workers get the dataset with the epoch set, which seeds the augmentation."""
    workers, _ = cpu_budget(workers, threads)
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        options["prefetch_factor"] = 2
    return options


def shows_progress(settings: Any) -> bool:
    """Whether a command with these settings (``--quiet``) shows progress: on rank 0 only."""
    return not settings.quiet and ddp.is_main()
