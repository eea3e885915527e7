"""elta_core: ELTA (ICML 2024) long-tail enhancers for image aesthetics models.

Three plug-in modules, each usable alone, defined once on NumPy arrays and framework
tensors:

- :mod:`elta_core.tfa`: Tail Feature Augmentation (label-guided feature mixup).
- :mod:`elta_core.flsa`: Feature-Label Similarity Alignment (a regulariser).
- :mod:`elta_core.apds`: Adaptive Probability Distribution Sharpening (pseudo-labels).

plus :mod:`elta_core.losses` and :mod:`elta_core.metrics`. Importing this package
imports NumPy only; framework adapters live in :mod:`elta_core.adapters`.
"""

from elta_core import apds, flsa, losses, metrics, tfa
from elta_core.backends import get_backend

__version__ = "0.1.0"

__all__ = ["__version__", "apds", "flsa", "get_backend", "losses", "metrics", "tfa"]
