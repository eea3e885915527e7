"""Deprecated: moved to :mod:`elta_core.app.training` (the application is apart from the library)."""

import warnings

from elta_core.app.training import *  # noqa: F401,F403

warnings.warn("elta_core.training moved to elta_core.app.training; import it from there", DeprecationWarning, stacklevel=2)
