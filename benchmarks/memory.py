"""Peak extra resident memory of one call, measured in a fresh Python process.

torch's CPU allocator keeps no statistics, so the child's peak resident set (Linux
``VmHWM``) is reset just before the call (``/proc/self/clear_refs``) and read after it:
the growth counts every page the call touched at its peak. One warm-up call runs first. A fresh process (not a fork,
which deadlocks torch's thread pool) keeps other benchmarks' memory out of the reading.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Callable


def peak_extra_mib(target: str, *args) -> float:
    """MiB that ``module:function(*args)`` adds at its peak.

    The function is called twice: ``function(*args, setup=True)`` must build the inputs
    and return a zero-argument callable that does the measured work.
    """
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", target, json.dumps(list(args))],
        check=True, capture_output=True, text=True,
    )
    return float(completed.stdout.strip().splitlines()[-1])


def clearing_gradient(step: Callable[[], object], tensor) -> Callable[[], None]:
    """``step`` followed by ``tensor.grad = None``: a gradient the warm-up call leaves is
    otherwise freed inside the measured call, and its pages hide that call's own (the
    peak of an FLSA step read 1.0x the features where it is 2.0x)."""

    def run() -> None:
        step()
        tensor.grad = None

    return run


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _main() -> None:
    module_name, function_name = sys.argv[1].split(":")
    args = json.loads(sys.argv[2])
    work = getattr(importlib.import_module(module_name), function_name)(*args)
    work()  # warm-up: one-time set-up (autograd engine, thread pools) is not the op's memory
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident set to the current one
    before = _status_kib("VmRSS")
    work()
    print((_status_kib("VmHWM") - before) / 1024.0)


if __name__ == "__main__":
    _main()
