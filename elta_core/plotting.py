"""Deprecated: moved to :mod:`elta_core.app.plotting` (the application is apart from the library)."""

import warnings

from elta_core.app.plotting import *  # noqa: F401,F403

warnings.warn("elta_core.plotting moved to elta_core.app.plotting; import it from there", DeprecationWarning, stacklevel=2)
