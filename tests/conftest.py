import os

# Triton reads this when its kernel modules are imported, so it must come first.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist (the README's test command: one worker a core), torch computes on one
# thread in each worker: two workers of two threads each on two cores stall each other's
# thread pools (README, "elta demo": 2 threads on a busy machine took 3 times as long as 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# The Keras tests run in one process per backend, started by tests/test_keras.py.
collect_ignore = [] if os.environ.get("ELTA_KERAS_SUBPROCESS") else ["keras_backend"]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_report_header(config):
    return f"shared data: {SHARED_DATA} ({'present' if SHARED_DATA.is_dir() else 'missing'})"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the real annotation files are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ava_scores(shared_data) -> np.ndarray:
    """Mean scores of the 12,776 images of the real AVA test file (vote counts 1..10)."""
    import csv

    with open(shared_data / "ava" / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = np.array([[float(row[f"score{k}"]) for k in range(2, 12)] for row in rows])
    return (counts / counts.sum(axis=1, keepdims=True)) @ np.arange(1, 11.0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240701)
