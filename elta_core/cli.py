"""Deprecated: moved to :mod:`elta_core.app.cli` (the application is apart from the library)."""

import warnings

from elta_core.app.cli import *  # noqa: F401,F403

warnings.warn("elta_core.cli moved to elta_core.app.cli; import it from there", DeprecationWarning, stacklevel=2)
