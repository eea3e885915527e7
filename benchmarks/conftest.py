"""Benchmarks: pytest-benchmark runs, each against a baseline in the same run.

Run with ``python -m pytest benchmarks --benchmark-enable`` and turn the JSON into the
tables of README.md with ``python benchmarks/report.py``. The Keras benchmark runs only
in a process of its own with ``KERAS_BACKEND`` set (TensorFlow and Triton must not load
in one process): ``KERAS_BACKEND=jax python -m pytest benchmarks/bench_keras_adapter.py``.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

collect_ignore = [] if os.environ.get("KERAS_BACKEND") else ["bench_keras_adapter.py"]
