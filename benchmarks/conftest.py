"""Benchmarks: pytest-benchmark runs, each against a baseline in the same run.

Run with ``python -m pytest benchmarks --benchmark-enable`` and turn the JSON into the
tables of README.md with ``python benchmarks/report.py``.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
