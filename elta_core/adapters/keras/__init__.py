"""Keras 3 adapter: ``ELTAModel`` wraps any ``keras.Model`` for ``compile()``/``fit()``
with TFA and FLSA, on the TensorFlow, JAX and torch backends; ``self_training`` runs the
APDS round (grid search, pseudo-labels, the round-2 data set).

Importing it imports Keras (and registers ``ELTAModel`` for ``.keras`` files).
"""

from elta_core.optional import MissingDependency

try:
    import keras  # noqa: F401
except ImportError as error:
    raise MissingDependency(
        f"keras could not be imported ({error}). Install it with a backend: pip install \"elta-core[keras-torch]\" "
        "and set KERAS_BACKEND=torch, or [keras-jax] (KERAS_BACKEND=jax), or [keras-tensorflow]"
    ) from None

from elta_core.adapters.keras.layers import ScoreMAE, split_at  # noqa: E402
from elta_core.adapters.keras.model import ELTAModel  # noqa: E402
from elta_core.adapters.keras.self_training import PseudoLabels, pseudo_label  # noqa: E402

__all__ = ["ELTAModel", "PseudoLabels", "ScoreMAE", "pseudo_label", "split_at"]
