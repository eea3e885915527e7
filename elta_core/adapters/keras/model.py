"""``ELTAModel``: TFA and FLSA for any ``keras.Model`` through ``compile()``/``fit()``.

The wrapped model is split into a backbone (input to the features that enter the head)
and a head. A training step runs the backbone once, the head on the batch and on the
TFA-mixed features (Eqs. 1-4, appended), and adds the weighted FLSA loss (Eqs. 5-6) to
the task loss (EMD for distributions, MSE for scores). Inference returns exactly what
the wrapped model returns. The same code runs on the TensorFlow, JAX and torch backends
of Keras: the equations are the core's, on Keras tensors.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import keras
from keras import ops

from elta_core import _checks, flsa, losses
from elta_core import tfa as tfa_core

OutputKind = Literal["auto", "logits", "probs", "score"]


def _nearest_layer_error(model: keras.Model, name: str, argument: str) -> ValueError:
    names = [layer.name for layer in model.layers]
    nearest = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    hint = f"nearest names: {', '.join(nearest)}" if nearest else f"layers: {', '.join(names[-8:])}"
    return ValueError(f"{argument}: {type(model).__name__} {model.name!r} has no layer {name!r} ({hint})")


def split_at(model: keras.Model, head: str) -> tuple[keras.Model, keras.Model]:
    """(backbone, head) of a Sequential or functional ``model``, the head starting at the
    layer named ``head``; both share the model's layers and weights."""
    if not isinstance(head, str) or not head:
        raise ValueError(f"head: expected the name of the layer where the head starts, got {head!r}")
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        if head not in names:
            raise _nearest_layer_error(model, head, "head")
        index = names.index(head)
        if index == 0:
            raise ValueError(f"head: {head!r} is the first layer of {model.name!r}; the backbone would be empty")
    try:
        layer = model.get_layer(head)
    except ValueError:
        raise _nearest_layer_error(model, head, "head") from None
    try:
        features, inputs = layer.input, model.inputs
    except (AttributeError, ValueError):
        raise ValueError(
            f"model: {type(model).__name__} {model.name!r} has no layer graph to split (a subclassed model?); "
            "pass backbone= and head_model= models instead"
        ) from None
    if isinstance(features, (list, tuple)):
        raise ValueError(f"head: layer {head!r} takes {len(features)} inputs; expected a single features tensor")
    backbone = keras.Model(inputs, features, name=f"{model.name}_backbone")
    head_model = keras.Model(features, model.outputs[0] if len(model.outputs) == 1 else model.outputs,
                             name=f"{model.name}_head")
    return backbone, head_model


def _last_activation_is_softmax(model: keras.Model) -> bool:
    layer = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or isinstance(layer, keras.layers.Softmax)


@keras.saving.register_keras_serializable(package="elta_core")
class ELTAModel(keras.Model):
    """Wrap a Keras model so that ``compile()``/``fit()`` train it with TFA and FLSA.

    Args:
        model: a Sequential or functional model, split at the layer named ``head``. For
            a subclassed model pass ``backbone=`` and ``head_model=`` instead.
        head: name of the first layer of the head; TFA mixes (and FLSA aligns) the
            features that enter it.
        tfa: switch TFA on or off. ``num_pairs``: an int (at most the batch) or a
            fraction of the batch. ``tau1``, ``tau2``, ``eps``: Eqs. 2-3.
        flsa_weight: gamma; 0 switches FLSA off.
        output: ``"probs"`` (softmax head, NIMA), ``"logits"``, ``"score"`` or
            ``"auto"`` (``"score"`` for one output, ``"probs"`` when the last layer is a
            softmax, else ``"logits"``).
        bin_values, score_scale: as in the core (default levels 1..C, a 1..10 scale).
        seed: an int for a ``keras.random.SeedGenerator``: the same seed draws the same
            pairs in every run on a backend.

    ``model(x)`` / ``predict`` return what the wrapped model returns. A training call
    ``model(x, training=True)`` returns ``(predictions, features)`` for the train step.
    A loss given to ``compile(loss=...)`` replaces the default task loss.
    """

    def __init__(
        self,
        model: keras.Model | None = None,
        head: str | None = None,
        *,
        backbone: keras.Model | None = None,
        head_model: keras.Model | None = None,
        tfa: bool = True,
        num_pairs: int | float = 1,
        tau1: float = tfa_core.DEFAULT_TAU1,
        tau2: float = tfa_core.DEFAULT_TAU2,
        eps: float = tfa_core.DEFAULT_EPS,
        flsa_weight: float = 1.0,
        output: OutputKind = "auto",
        bin_values: Any = None,
        score_scale: float = 1.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if model is None:
            if backbone is None or head_model is None:
                raise ValueError("model: expected a model with head=..., or backbone= and head_model= models")
            self.backbone, self.head = backbone, head_model
        else:
            if backbone is not None or head_model is not None:
                raise ValueError("backbone: pass either a model with head=..., or backbone= and head_model=, not both")
            if not isinstance(model, keras.Model):
                raise ValueError(f"model: expected a keras.Model, got {type(model).__name__}")
            if head is None:
                raise ValueError('head: expected the name of the layer where the head starts (e.g. "logits")')
            self.backbone, self.head = split_at(model, head)
        self.wrapped = model
        self.head_name = head
        if output not in ("auto", "logits", "probs", "score"):
            raise ValueError(f"output: expected 'auto', 'logits', 'probs' or 'score', got {output!r}")
        self.flsa_weight = _checks.finite_number(flsa_weight, "flsa_weight", "a finite weight >= 0")
        if self.flsa_weight < 0:
            raise ValueError(f"flsa_weight: expected a finite weight >= 0, got {flsa_weight!r}")
        tfa_core.resolve_num_pairs(num_pairs, 2**31)  # type and range only; clipped to the batch later
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed: expected None or an int, got {seed!r}")
        self.tfa_enabled = bool(tfa)
        self.num_pairs = num_pairs
        self.tau1 = _checks.positive_number(tau1, "tau1")
        self.tau2 = _checks.positive_number(tau2, "tau2")
        self.eps = _checks.positive_number(eps, "eps")
        self.output_type = output
        self.bin_values = None if bin_values is None else [float(v) for v in bin_values]
        self.score_scale = _checks.positive_number(score_scale, "score_scale")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    # -- forward -------------------------------------------------------------------
    def call(self, inputs, training: bool = False):
        if not training:
            if self.wrapped is not None:
                return self.wrapped(inputs, training=False)
            return self.head(self.backbone(inputs, training=False), training=False)
        features = self.backbone(inputs, training=True)
        return self.head(features, training=True), features

    def output_kind(self, predictions) -> str:
        if self.output_type != "auto":
            return self.output_type
        if len(predictions.shape) == 1 or predictions.shape[-1] == 1:
            return "score"
        return "probs" if _last_activation_is_softmax(self.wrapped or self.head) else "logits"

    # -- training ------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ValueError("sample_weight: not supported by ELTAModel (TFA appends mixed samples); "
                             "drop sample_weight/class_weight from fit")
        if y is None:
            raise ValueError("y: ELTAModel needs labels, (B,) scores or (B, C) distributions")
        if isinstance(y_pred, (tuple, list)):
            predictions, features = y_pred
        else:  # evaluate(): the wrapped model's output, no features
            predictions, features = y_pred, None
        labels = ops.cast(y, "float32")
        self._check_labels(labels, predictions)
        size = predictions.shape[0]
        if features is not None and self.tfa_enabled and size >= 2:
            pairs = tfa_core.sample_pairs(labels, min(self.num_pairs, size) if isinstance(self.num_pairs, int)
                                     else self.num_pairs, self.tau1, self.tau2, self.eps, seed=self.seed_generator,
                                     bin_values=self.bin_values, score_scale=self.score_scale, validate=False)
            features, labels = tfa_core.mix(features, labels, *pairs, validate=False)
            mixed = self.head(features[size:], training=training)
            predictions = ops.concatenate([predictions, ops.cast(mixed, predictions.dtype)], axis=0)
        task = self._task_loss(x, labels, predictions, training)
        if features is None or self.flsa_weight == 0:
            return task
        scores = losses.label_scores(labels, self.bin_values, validate=False)
        flat = ops.reshape(features, (int(features.shape[0]), -1))
        return task + self.flsa_weight * ops.cast(flsa.alignment_loss(flat, scores, validate=False), task.dtype)

    def _task_loss(self, x, labels, predictions, training):
        if self._compile_loss is not None:  # the user's compiled loss, plus the layers' losses
            return super().compute_loss(x, labels, predictions, None, training)
        own = losses.task_loss(ops.cast(predictions, "float32"), labels, self.output_kind(predictions),
                               self.bin_values, validate=False)
        for extra in self.losses:  # regularisers of the wrapped layers
            own = own + ops.cast(ops.sum(extra), own.dtype)
        return own

    def _check_labels(self, labels, predictions) -> None:
        label_shape, prediction_shape = tuple(labels.shape), tuple(predictions.shape)
        if len(label_shape) not in (1, 2):
            raise ValueError(f"y: expected (B,) scores or (B, C) distributions, got shape {label_shape}")
        if label_shape[0] is not None and prediction_shape[0] is not None and label_shape[0] != prediction_shape[0]:
            raise ValueError(f"y: expected {prediction_shape[0]} labels to match the batch of x, got {label_shape[0]}")

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``; labels given as arrays and weights are checked first, so a
        bad call fails before Keras builds its optimizer state."""
        for name in ("sample_weight", "class_weight"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}: not supported by ELTAModel (TFA appends mixed samples); drop it from fit")
        shape = getattr(y, "shape", None)
        levels = getattr(getattr(self.head, "output", None), "shape", (None,))[-1]
        if shape is not None and len(shape) == 2 and shape[1] > 1 and levels not in (None, 1, shape[1]):
            raise ValueError(f"y: expected distributions over the model's {levels} outputs, got {shape[1]} levels")
        if shape is not None and len(shape) not in (1, 2):
            raise ValueError(f"y: expected (B,) scores or (B, C) distributions, got shape {tuple(shape)}")
        return super().fit(x, y, *args, **kwargs)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, (tuple, list)):
            y_pred = y_pred[0]
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def make_train_function(self, force: bool = False):
        if keras.backend.backend() != "tensorflow" or self.run_eagerly:
            return super().make_train_function(force)
        if self.train_function is None or force:
            self.train_function = self._traced_per_shape(self.train_step)
        return self.train_function

    def make_test_function(self, force: bool = False):  # evaluate() runs the core too (the task loss)
        if keras.backend.backend() != "tensorflow" or self.run_eagerly:
            return super().make_test_function(force)
        if self.test_function is None or force:
            self.test_function = self._traced_per_shape(self.test_step)
        return self.test_function

    def _traced_per_shape(self, step_function):
        """On TensorFlow, a step traced once per batch shape (as JAX does), so that the
        core sees static shapes; Keras's own function relaxes the batch size to None."""
        import tensorflow as tf

        if self.distribute_strategy.num_replicas_in_sync > 1:
            raise ValueError("ELTAModel on TensorFlow runs on one device; tf.distribute strategies with several "
                             "replicas are not supported (use the JAX or torch backend, or one device)")
        if self.steps_per_execution != 1:
            raise ValueError(f"steps_per_execution: ELTAModel on TensorFlow runs one step per call, "
                             f"got {self.steps_per_execution}")
        step = tf.function(step_function, jit_compile=self.jit_compile is True)

        def function(iterator):
            if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    raise StopIteration
                data = optional.get_value()
            else:
                data = next(iter(iterator))
            data = tf.nest.map_structure(lambda item: None if isinstance(item, tf.experimental.Optional) else item,
                                         data)
            return step(data)

        return function

    # -- saving --------------------------------------------------------------------
    def get_config(self) -> dict:
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            model=serialize(self.wrapped) if self.wrapped is not None else None,
            head=self.head_name,
            backbone=None if self.wrapped is not None else serialize(self.backbone),
            head_model=None if self.wrapped is not None else serialize(self.head),
            tfa=self.tfa_enabled, num_pairs=self.num_pairs, tau1=self.tau1, tau2=self.tau2, eps=self.eps,
            flsa_weight=self.flsa_weight, output=self.output_type, bin_values=self.bin_values,
            score_scale=self.score_scale, seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        for key in ("model", "backbone", "head_model"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        return cls(**config)
