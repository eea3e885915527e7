"""Deprecated: moved to :mod:`elta_core.app.demo` (the application is apart from the library)."""

import warnings

from elta_core.app.demo import *  # noqa: F401,F403

warnings.warn("elta_core.demo moved to elta_core.app.demo; import it from there", DeprecationWarning, stacklevel=2)
