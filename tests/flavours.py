"""Backends and dtypes the core is tested on, with per-dtype tolerances (FlagGems style).

Inputs are rounded to the flavour's dtype first; the float64 reference then runs on the
rounded values, so the tolerance measures the computation, not the input rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

FLAVOURS = ["numpy-float64", "numpy-float32", "torch-float64", "torch-float32", "torch-bfloat16"]
TOLERANCE = {
    "float64": dict(rtol=1e-9, atol=1e-11),
    "float32": dict(rtol=2e-4, atol=2e-5),
    # bf16 inputs are computed in float32 inside, so the float32 bound holds on rounded inputs.
    "bfloat16": dict(rtol=2e-4, atol=2e-5),
}


def dtype_of(flavour: str) -> str:
    return flavour.split("-")[1]


def make(values, flavour: str):
    """``values`` (NumPy, float64) in the flavour's framework and dtype."""
    values = np.asarray(values, dtype=np.float64)
    framework, dtype = flavour.split("-")
    if framework == "numpy":
        return values.astype(dtype)
    torch = pytest.importorskip("torch")
    return torch.tensor(values, dtype=getattr(torch, dtype))


def rounded(values, flavour: str) -> np.ndarray:
    """The float64 values that ``make(values, flavour)`` actually holds."""
    return to_numpy(make(values, flavour))


def to_numpy(x) -> np.ndarray:
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x, dtype=np.float64)
    return x.detach().double().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()


def assert_close(actual, expected, flavour: str, scale: float = 1.0):
    tol = TOLERANCE[dtype_of(flavour)]
    np.testing.assert_allclose(
        to_numpy(actual), np.asarray(expected, np.float64), rtol=tol["rtol"] * scale, atol=tol["atol"] * scale
    )


def same_kind(result, flavour: str) -> bool:
    framework = flavour.split("-")[0]
    return isinstance(result, (np.ndarray, np.generic)) if framework == "numpy" else type(result).__module__.startswith("torch")
