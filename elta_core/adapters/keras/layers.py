"""Keras plumbing of the adapter: splitting a model at its head, the per-shape tracing of
TensorFlow steps, and the callback that stops ``fit`` on a non-finite loss."""

from __future__ import annotations

import contextlib
import difflib

import keras
import numpy as np
from keras import ops


def _nearest_layer_error(model: keras.Model, name: str, argument: str) -> ValueError:
    names = [layer.name for layer in model.layers]
    nearest = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    hint = f"nearest names: {', '.join(nearest)}" if nearest else f"layers: {', '.join(names[-8:])}"
    return ValueError(f"{argument}: {type(model).__name__} {model.name!r} has no layer {name!r} ({hint})")


def resolve_head(model: keras.Model, head: str) -> str:
    """``head``, or for ``"auto"`` the last layer that has weights (the output layer of a
    NIMA-style model, MobileNetV3's ``logits``)."""
    if head != "auto":
        return head
    weighted = [layer.name for layer in getattr(model, "layers", []) if layer.weights]
    if not weighted:
        raise ValueError(f"head: cannot tell the head of {model.name!r} (no layer with weights); pass head=")
    return weighted[-1]


def split_at(model: keras.Model, head: str) -> tuple[keras.Model, keras.Model]:
    """(backbone, head) of a Sequential or functional ``model``, the head starting at the
    layer named ``head``; both share the model's layers and weights."""
    if not isinstance(head, str) or not head:
        raise ValueError(f"head: expected the name of the layer where the head starts, got {head!r}")
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        if head not in names:
            raise _nearest_layer_error(model, head, "head")
        if names.index(head) == 0:
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


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether the model's last layer is a softmax (a NIMA-style head)."""
    layer = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or isinstance(layer, keras.layers.Softmax)


def check_distribution() -> None:
    """Multi-device training: ``keras.distribution.DataParallel`` on the JAX backend, where
    the traced step sees the global batch (TFA and FLSA then equal one device's, tested).
    Anything else is refused here rather than trained some other way."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return
    if keras.backend.backend() != "jax":
        raise ValueError(f"keras.distribution: ELTAModel trains on several devices with DataParallel on the JAX "
                         f"backend only; this process runs {keras.backend.backend()!r} with "
                         f"{type(distribution).__name__} set (unset it, or use KERAS_BACKEND=jax)")
    if not isinstance(distribution, keras.distribution.DataParallel):
        raise ValueError(f"keras.distribution: ELTAModel supports DataParallel, not {type(distribution).__name__} "
                         "(model parallelism is untested with TFA and FLSA)")


def data_parallel_devices() -> int:
    """The number of devices a ``DataParallel`` distribution splits each batch over (1 without one)."""
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.DataParallel):
        return 1
    return int(np.prod(distribution.device_mesh.shape))


def check_batches_divide(size: int | None, batch_size: int | None, devices: int) -> None:
    """Every batch of ``size`` samples in batches of ``batch_size`` (Keras's default 32),
    the last included, must split evenly over the ``devices`` of ``DataParallel``."""
    if devices <= 1 or size is None:
        return
    batch_size = 32 if batch_size is None else int(batch_size)
    last = size % batch_size
    for what, count in (("batch_size", min(batch_size, size)), ("the last batch", last)):
        if count % devices:
            raise ValueError(indivisible_message(f"{what} is {count}" + (
                f" ({size} samples in batches of {batch_size})" if what != "batch_size" else ""), devices))


def indivisible_message(found: str, devices: int) -> str:
    return (f"batch_size: DataParallel splits every batch over {devices} devices, and {found}, which {devices} does "
            f"not divide: give a batch_size that is a multiple of {devices} and drop or pad the last batch (with "
            f"tf.data, .batch(n, drop_remainder=True))")


@contextlib.contextmanager
def named_indivisible_batches(devices: int):
    """JAX's ``IndivisibleError`` for a batch that ``devices`` do not divide, as a
    ``ValueError`` that says what to change."""
    try:
        yield
    except Exception as error:
        if type(error).__name__ != "IndivisibleError" or devices <= 1:
            raise
        shape = str(error).split("full shape: ")[-1].split(")")[0] + ")" if "full shape" in str(error) else "?"
        raise ValueError(indivisible_message(f"a batch has shape {shape}", devices)) from None


def traced_per_shape(model: keras.Model, step_function):
    """On TensorFlow, ``step_function`` traced once per batch shape (as JAX does), so that
    the core sees static shapes; Keras's own function relaxes the batch size to None."""
    import tensorflow as tf

    if model.distribute_strategy.num_replicas_in_sync > 1:
        raise ValueError("ELTAModel on TensorFlow runs on one device; tf.distribute strategies with several "
                         "replicas are not supported (use keras.distribution.DataParallel on the JAX backend, or one device)")
    if model.steps_per_execution != 1:
        raise ValueError(f"steps_per_execution: ELTAModel on TensorFlow runs one step per call, "
                         f"got {model.steps_per_execution}")
    step = tf.function(step_function, jit_compile=model.jit_compile is True)

    def function(iterator):
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                raise StopIteration
            data = optional.get_value()
        else:
            data = next(iter(iterator))
        data = tf.nest.map_structure(lambda item: None if isinstance(item, tf.experimental.Optional) else item, data)
        return step(data)

    return function


class StopOnNonFinite(keras.callbacks.Callback):
    """Raise ``ValueError`` when the traced step found invalid labels, and
    ``FloatingPointError`` naming the first non-finite loss, from the batch logs (the step
    itself runs traced, where values cannot be read)."""

    def on_train_batch_end(self, batch, logs=None):
        if float((logs or {}).get("invalid_label_batches", 0.0)) > 0:
            raise ValueError(f"y: the labels of batch {batch} are not valid, so its update was skipped and fit "
                             "stopped (the weights are those before it): expected finite score distributions "
                             "(non-negative, rows summing to 1; not raw vote counts) or scores on the model's rating "
                             "scale. Check them with elta_core.step.check_labels(model.elta_config, y)")
        for name in ("task_loss", "flsa_loss", "loss"):
            value = (logs or {}).get(name)
            if value is not None and not np.isfinite(float(value)):
                raise FloatingPointError(f"ELTAModel: the {name.replace('_', ' ')} is {float(value)} at batch {batch}: "
                                         "training diverged or got a non-finite input (check the learning rate, "
                                         "the inputs, the labels and the model's output)")


class QuietProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar without the numbers that say nothing: the invalid-label counter
    while it is 0 (it stops ``fit`` when it is not), and the FLSA term of validation,
    which evaluation never computes. The history keeps every value."""

    @staticmethod
    def _shown(logs):
        return {name: value for name, value in (logs or {}).items()
                if not (name.endswith("invalid_label_batches") and float(value) == 0) and name != "val_flsa_loss"}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs))

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs))

    def on_test_end(self, logs=None):
        super().on_test_end(self._shown(logs))


class ScoreMAE(keras.metrics.Mean):
    """The mean absolute error of the predicted *score* (the mean of the predicted
    distribution over ``bin_values``, default 1..C) against the true score (of distribution
    or score labels): what an aesthetics user means by MAE. Keras's ``"mae"`` on a
    distribution head averages the error of the C probabilities instead.

    Args:
        output: what the model returns: ``"logits"``, ``"probs"`` (a softmax head) or
            ``"score"``; ``"auto"`` takes ``"probs"`` for rows that sum to 1.
        bin_values: the rating value of each output level.
    """

    def __init__(self, output: str = "auto", bin_values=None, name: str = "score_mae", **kwargs):
        super().__init__(name=name, **kwargs)
        if output not in ("auto", "logits", "probs", "score"):
            raise ValueError(f"output: expected 'auto', 'logits', 'probs' or 'score', got {output!r}")
        self.output, self.bin_values = output, None if bin_values is None else [float(v) for v in bin_values]

    def update_state(self, y_true, y_pred, sample_weight=None):
        from elta_core import losses

        y_pred = ops.cast(y_pred, "float32")
        shape = tuple(y_pred.shape)
        if self.output == "score" or len(shape) == 1 or shape[-1] == 1:
            predicted = losses.output_scores(y_pred, "score", self.bin_values, validate=False)
        elif self.output != "auto":
            predicted = losses.output_scores(y_pred, self.output, self.bin_values, validate=False)
        else:  # a softmax head's rows sum to 1, logits' (almost) never do
            is_probs = ops.abs(ops.sum(y_pred, axis=-1) - 1) < 1e-3
            predicted = ops.where(is_probs, losses.output_scores(y_pred, "probs", self.bin_values, validate=False),
                                  losses.output_scores(y_pred, "logits", self.bin_values, validate=False))
        true = losses.label_scores(ops.cast(y_true, "float32"), self.bin_values, validate=False)
        return super().update_state(ops.abs(ops.reshape(predicted, (-1,)) - ops.reshape(true, (-1,))),
                                    sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "output": self.output, "bin_values": self.bin_values}
