"""Optional dependencies: a missing one is an ``ImportError`` that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependency", "require"]


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependency` naming ``pip install "elta-core[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise MissingDependency(
            f"{top} is needed here but is not installed ({error}); install it with: pip install \"elta-core[{extra}]\""
        ) from None
