"""``ELTAModel``: TFA and FLSA for any ``keras.Model`` through ``compile()``/``fit()``.

The wrapped model is split into a backbone (input to the features that enter the head)
and a head (:mod:`elta_core.adapters.keras.layers`). A training step runs the backbone
once and the head on the batch; ``compute_loss`` runs the step of :mod:`elta_core.step`
(TFA on the features, the head on the mixed rows, the task loss and FLSA). The task and
FLSA losses are metrics of ``fit``'s history; a non-finite one stops ``fit`` with a
``FloatingPointError`` naming it. Inference returns exactly what the wrapped model returns.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from elta_core import step as core_step
from elta_core.adapters.keras.layers import (QuietProgbar, StopOnNonFinite, check_batches_divide, check_distribution,
                                            data_parallel_devices, ends_in_softmax, named_indivisible_batches,
                                            resolve_head, split_at, traced_per_shape)


@keras.saving.register_keras_serializable(package="elta_core")
class ELTAModel(keras.Model, core_step.ConfigAttributes):
    """Wrap a Keras model so that ``compile()``/``fit()`` train it with TFA and FLSA.

    Args:
        model: a Sequential or functional model, split at the layer named ``head``. For
            a subclassed model pass ``backbone=`` and ``head_model=`` instead.
        head: name of the first layer of the head, or ``"auto"`` (the last layer with
            weights); TFA mixes (and FLSA aligns) the features that enter it.
        seed: an int for a ``keras.random.SeedGenerator``: the same seed draws the same
            pairs in every run on a backend.
        config: an :class:`elta_core.step.ELTAConfig`, or its fields as keywords (``tfa``,
            ``num_pairs``, ``tau1``, ``tau2``, ``eps``, ``flsa_weight``, ``output``,
            ``bin_values``, ``score_scale``, ...), with the core's defaults.

    A loss given to ``compile(loss=...)`` replaces the default task loss.
    """

    def __init__(self, model: keras.Model | None = None, head: str | None = None, *,
                 backbone: keras.Model | None = None, head_model: keras.Model | None = None,
                 seed: int | None = None, config: core_step.ELTAConfig | None = None, **options: Any):
        keras_options = {k: options.pop(k) for k in ("name", "trainable", "dtype") if k in options}
        super().__init__(**keras_options)
        self.elta_config = core_step.make_config(config, options, "ELTAModel")
        if model is not None and head is not None:
            head = resolve_head(model, head) if isinstance(model, keras.Model) else head
        self.model, self.head_name = model, head
        self.backbone, self.head = _backbone_and_head(model, head, backbone, head_model)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed: expected None or an int, got {seed!r}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.flsa_loss_tracker = keras.metrics.Mean(name="flsa_loss")
        self.invalid_labels_tracker = keras.metrics.Sum(name="invalid_label_batches")
        self._features = None  # the backbone's output of the current training forward

    def call(self, inputs, training: bool = False):
        if not training:
            self._features = None
            if self.model is not None:
                return self.model(inputs, training=False)
            return self.head(self.backbone(inputs, training=False), training=False)
        if isinstance(inputs, (tuple, list)):  # round2="separate": (labelled, pseudo-labelled)
            labelled, pseudo = inputs
            return ops.concatenate([self.call(labelled, training=True), self._forward(pseudo)], axis=0)
        self._features = self.backbone(inputs, training=True)
        return self.head(self._features, training=True)

    def _forward(self, inputs):
        return self.head(self.backbone(inputs, training=True), training=True)

    def output_kind(self, predictions) -> str:
        """``"logits"``, ``"probs"`` or ``"score"``: see :func:`elta_core.step.output_kind`."""
        return core_step.output_kind(self.elta_config, predictions, ends_in_softmax(self.model or self.head))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ValueError("sample_weight: not supported by ELTAModel (TFA appends mixed samples); "
                             "drop sample_weight/class_weight from fit")
        if y is None:
            raise ValueError("y: ELTAModel needs labels, (B,) scores or (B, C) distributions")
        features, self._features = (self._features if training else None), None
        if isinstance(y, (tuple, list)):  # round2="separate": L_s + L_u (Eq. 10)
            labelled_y, pseudo_y = y
            size = labelled_y.shape[0]
            pseudo_loss = self._pseudo_loss(x, pseudo_y, y_pred[size:], training)
            return self._labelled_loss(x, labelled_y, y_pred[:size], features, training) + pseudo_loss
        return self._labelled_loss(x, y, y_pred, features, training)

    def _pseudo_loss(self, x, y, predictions, training):
        return core_step.pseudo_labelled_loss(self.elta_config, predictions, ops.cast(y, "float32"),
                                              self.output_kind(predictions), self._task_loss(x, training),
                                              validate=False)

    def _labelled_loss(self, x, y, predictions, features, training):
        # Labels from a dataset pipeline are checked here, traced; StopOnNonFinite raises.
        levels = predictions.shape[-1] if len(predictions.shape) == 2 else None
        self.invalid_labels_tracker.update_state(core_step.invalid_labels(self.elta_config, ops.cast(y, "float32"), levels))
        size = predictions.shape[0]

        def forward(step: core_step.LabelledStep):
            if features is None:
                return predictions
            mixed = step.mix(features)
            step.align(mixed)
            if step.pairs is None or mixed.shape[0] <= size:
                return predictions
            extra = self.head(mixed[size:], training=training)
            return ops.concatenate([predictions, ops.cast(extra, predictions.dtype)], axis=0)

        result = core_step.labelled_step(self.elta_config, ops.cast(y, "float32"), forward, kind_of=self.output_kind,
                                         batch_size=size, seed=self.seed_generator,
                                         user_loss=self._task_loss(x, training), validate=False, check_finite=False)
        self.task_loss_tracker.update_state(result.task_loss)
        self.flsa_loss_tracker.update_state(result.flsa_loss)
        return result.loss

    def _task_loss(self, x, training):
        """The task loss with the wrapped layers' own losses (regularisers) added: the
        user's compiled loss, or the core's default."""
        if self.loss is not None:
            return lambda predictions, labels: super(ELTAModel, self).compute_loss(x, labels, predictions, None, training)
        config = self.elta_config

        def default(predictions, labels):
            kind = self.output_kind(predictions)
            own = core_step.task_loss(config, ops.cast(predictions, "float32"), labels, kind)
            for extra in self.losses:
                own = own + ops.cast(ops.sum(extra), own.dtype)
            return own

        return default

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """``keras.Model.fit``; labels given as arrays are checked first (the shared checks
        of :func:`elta_core.step.check_labels`), so a bad call fails before training."""
        check_distribution()
        for name in ("sample_weight", "class_weight"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}: not supported by ELTAModel (TFA appends mixed samples); drop it from fit")
        if isinstance(y, np.ndarray):
            labels = core_step.check_labels(self.elta_config, np.asarray(y, dtype=np.float64))
            levels = self._head_levels()
            if levels not in (None, 1) and self.elta_config.output != "score":
                core_step.check_levels(self.elta_config, int(levels), labels)
        devices = data_parallel_devices()
        if hasattr(x, "shape") and len(x.shape) and x.shape[0] is not None and not kwargs.get("validation_split"):
            check_batches_divide(int(x.shape[0]), args[0] if args else kwargs.get("batch_size"), devices)
        callbacks = list(callbacks or []) + [StopOnNonFinite()]
        if not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
            callbacks.append(QuietProgbar())  # Keras adds its own otherwise; verbose=0 still prints nothing
        with named_indivisible_batches(devices):
            return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, **kwargs):
        with named_indivisible_batches(data_parallel_devices()):
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with named_indivisible_batches(data_parallel_devices()):
            return super().predict(*args, **kwargs)

    # An invalid batch of labels changes no weight: its update is undone inside the traced
    # step (the counter of invalid batches still counts it) and StopOnNonFinite stops fit
    # at the end of that batch, so the weights are those of the batch before.
    def train_step(self, *args):
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_train_step(*args)
        (data,) = args
        invalid = self._invalid_labels(data)
        if backend == "torch":  # eager: the update is not made at all
            if float(invalid) > 0:
                self.invalid_labels_tracker.update_state(invalid)
                return self._built_metrics_result()
            return super().train_step(data)
        # TensorFlow: a tf.cond around the step cannot trace before the compiled metrics
        # are built, so the step runs and the updated variables are selected back.
        updated = list(self.trainable_variables) + list(self.optimizer.variables)
        before = [ops.copy(v.value) for v in updated]
        logs = super().train_step(data)
        for variable, old in zip(updated, before):
            variable.assign(ops.where(invalid > 0, old, variable.value))
        return logs

    def _built_metrics_result(self) -> dict:
        results = {}
        for metric in self.metrics:
            if getattr(metric, "built", True):
                value = metric.result()
                results.update(value if isinstance(value, dict) else {metric.name: value})
        return results

    def _jax_train_step(self, state, data):
        import jax

        logs, new_state = super().train_step(state, data)
        valid = self._invalid_labels(data) == 0
        keep = lambda new, old: jax.numpy.where(valid, new, old)  # noqa: E731
        *updated, metrics = new_state
        kept = [jax.tree_util.tree_map(keep, new, old) for new, old in zip(updated, state[:3])]
        return logs, (*kept, metrics)

    def _invalid_labels(self, data):
        """1.0 if the batch's (labelled) labels are not valid, as a tensor."""
        y = keras.utils.unpack_x_y_sample_weight(data)[1]
        if isinstance(y, (tuple, list)):  # round2="separate": (labelled, pseudo-labelled)
            y = y[0]
        if y is None:
            return ops.zeros((), "float32")
        return ops.cast(core_step.invalid_labels(self.elta_config, ops.cast(y, "float32"), self._head_levels()),
                        "float32")

    def _head_levels(self) -> int | None:
        """The width of the head's output (the rating levels), where the head is built."""
        return getattr(getattr(self.head, "output", None), "shape", (None,))[-1]

    # On TensorFlow the step is traced once per batch shape, as JAX does, so that the
    # core sees static shapes. Keras offers no public switch for this, so these two
    # (documented, public) factories are overridden on TensorFlow only.
    def make_train_function(self, force: bool = False):
        return self._step_function("train", force) or super().make_train_function(force)

    def make_test_function(self, force: bool = False):
        return self._step_function("test", force) or super().make_test_function(force)

    def _step_function(self, kind: str, force: bool):
        if keras.backend.backend() != "tensorflow" or self.run_eagerly:
            return None
        attribute = f"{kind}_function"
        if getattr(self, attribute) is None or force:
            setattr(self, attribute, traced_per_shape(self, getattr(self, f"{kind}_step")))
        return getattr(self, attribute)

    def get_config(self) -> dict:
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        own = self.model is not None
        config.update(model=serialize(self.model) if own else None, head=self.head_name,
                      backbone=None if own else serialize(self.backbone),
                      head_model=None if own else serialize(self.head), seed=self.seed)
        fields = {name: getattr(self.elta_config, name) for name in core_step.ELTAConfig.__dataclass_fields__}
        fields["bin_values"] = None if fields["bin_values"] is None else list(fields["bin_values"])
        config.update(fields)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        config = dict(config)
        for key in ("model", "backbone", "head_model"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        return cls(**config)


def _backbone_and_head(model, head, backbone, head_model) -> tuple[keras.Model, keras.Model]:
    if model is None:
        if backbone is None or head_model is None:
            raise ValueError("model: expected a model with head=..., or backbone= and head_model= models")
        return backbone, head_model
    if backbone is not None or head_model is not None:
        raise ValueError("backbone: pass either a model with head=..., or backbone= and head_model=, not both")
    if not isinstance(model, keras.Model):
        raise ValueError(f"model: expected a keras.Model, got {type(model).__name__}")
    if head is None:
        raise ValueError('head: expected the name of the layer where the head starts (e.g. "logits")')
    return split_at(model, head)
