"""Backend lookup by tensor type, in the style of einops.

Every equation in :mod:`elta_core` is written once against the small set of array
operations that a :class:`~elta_core.backends.base.Backend` offers. The backend is
chosen from the type of the input, and a framework is only consulted if the user has
already imported it: importing :mod:`elta_core` never imports torch, TensorFlow or JAX.
The answer is cached per type, so a training step pays one dictionary lookup per call.
"""

from __future__ import annotations

import sys
from typing import Any

from elta_core.backends.base import Backend
from elta_core.backends.numpy_backend import NumpyBackend

__all__ = ["Backend", "get_backend"]

# (framework module name, dotted path of the backend class). The class module is
# imported only once the framework itself is in sys.modules.
_LAZY_BACKENDS: list[tuple[str, str]] = [
    ("torch", "elta_core.backends.torch_backend:TorchBackend"),
    ("keras", "elta_core.backends.keras_backend:KerasBackend"),  # TensorFlow and JAX tensors
]
_loaded: dict[str, Backend] = {}
_numpy_backend = NumpyBackend()
_by_type: dict[type, Backend] = {}


def _load(framework_module: str, backend_path: str) -> Backend:
    if framework_module not in _loaded:
        import importlib

        module_name, class_name = backend_path.split(":")
        _loaded[framework_module] = getattr(importlib.import_module(module_name), class_name)()
    return _loaded[framework_module]


def get_backend(x: Any) -> Backend:
    """Return the backend that owns ``x``.

    NumPy arrays, NumPy scalars, Python numbers and lists go to the NumPy backend.
    Raises ``TypeError`` for anything else that no loaded framework claims.
    """
    cached = _by_type.get(type(x))
    if cached is not None:
        return cached
    backend = _find_backend(x)
    _by_type[type(x)] = backend
    return backend


def _find_backend(x: Any) -> Backend:
    if isinstance(x, _numpy_backend.tensor_types):
        return _numpy_backend
    for framework_module, backend_path in _LAZY_BACKENDS:
        if framework_module in sys.modules:
            backend = _load(framework_module, backend_path)
            if backend.is_tensor(x):
                return backend
    if isinstance(x, (list, tuple, int, float)):
        return _numpy_backend
    names = ["numpy"] + [name for name, _ in _LAZY_BACKENDS]
    raise TypeError(
        f"elta_core cannot handle inputs of type {type(x).__module__}.{type(x).__name__}; "
        f"expected a NumPy array or a tensor of one of: {', '.join(names)}"
    )
