"""Runs tests/keras_backend once per Keras backend, each in its own process (Keras
chooses its backend once per process, from KERAS_BACKEND)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_adapter_on_backend(backend):
    for module in ("keras", FRAMEWORK[backend]):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, ELTA_KERAS_SUBPROCESS="1", TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax":  # two host devices, for keras.distribution.DataParallel
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/keras_backend"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert completed.returncode == 0, f"KERAS_BACKEND={backend}:\n{completed.stdout[-6000:]}\n{completed.stderr[-3000:]}"
