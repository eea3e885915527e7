"""One ELTA training step, framework-neutral: what every adapter runs on a labelled batch.

A step is ``L_s = task(predictions, labels) + gamma * FLSA(features, labels)`` on the
batch extended by TFA (paper section 3, Eqs. 1-6; ``L_s`` of Eq. 10). An adapter only
finds the layer where the features enter the head, and calls :func:`labelled_step` once
per labelled batch with its forward. The step, in this order:

1. checks the batch's labels (:func:`check_labels`), once;
2. runs the adapter's forward, inside which the adapter calls :meth:`LabelledStep.mix` on
   the features entering the head (TFA, Eqs. 1-4) and :meth:`LabelledStep.align` on the
   features FLSA aligns;
3. checks the model's output against the extended labels (:func:`check_output`), once;
4. computes the losses (:func:`losses_of`: task loss, FLSA, the total) and raises on a
   non-finite term.

A pseudo-labelled batch (``L_u`` of Eq. 10) is :func:`pseudo_labelled_loss`.

The configuration, its defaults and its validation live in :class:`ELTAConfig`; the
output-kind rule in :func:`output_kind`. Nothing here imports a framework: tensors go
through the backends (see ``docs/design.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Union


from elta_core import _checks, flsa, losses
from elta_core import tfa as tfa_core
from elta_core.backends import get_backend

Tensor = Any
OutputKind = Union[Literal["auto"], losses.OutputKind]  # "auto": decided per batch by output_kind()
OUTPUT_KINDS = ("auto", *losses.OUTPUT_KINDS)
MixMode = Literal["append", "replace"]

DEFAULT_NUM_PAIRS = 1  # the authors' code mixes one pair per batch
DEFAULT_FLSA_WEIGHT = 1.0
# Scores may sit this fraction of the rating range outside the levels' values (rounding of
# vote means, a slightly wider scale) before they are refused as being on another scale.
SCALE_SLACK = _checks.SCALE_SLACK


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class ELTAConfig:
    """The settings of a step, validated once when made.

    Attributes:
        tfa: switch TFA on or off.
        num_pairs: TFA pairs per batch, an int (clipped to the batch) or a fraction of
            the batch in (0, 1].
        tau1, tau2, eps: TFA temperatures in label units (Eqs. 2-3).
        mix_mode: ``"append"`` (the authors' code) or ``"replace"``, see :func:`elta_core.tfa.mix`.
        flsa_weight: gamma, the weight of the FLSA loss; 0 switches FLSA off.
        output: what the model returns, see :func:`output_kind`.
        bin_values: the rating value of each output level (default ``1..C``).
        score_scale: label units per point of a 1..10 scale (e.g. 1/9 for 0..1 scores).
        check_finite: raise ``FloatingPointError`` naming the term when a loss is NaN/Inf.
    """

    tfa: bool = True
    num_pairs: int | float = DEFAULT_NUM_PAIRS
    tau1: float = tfa_core.DEFAULT_TAU1
    tau2: float = tfa_core.DEFAULT_TAU2
    eps: float = tfa_core.DEFAULT_EPS
    mix_mode: MixMode = "append"
    flsa_weight: float = DEFAULT_FLSA_WEIGHT
    output: OutputKind = "auto"
    bin_values: tuple[float, ...] | None = field(default=None)
    score_scale: float = 1.0
    check_finite: bool = True

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        put("tfa", _flag(self.tfa, "tfa"))
        put("check_finite", _flag(self.check_finite, "check_finite"))
        tfa_core.resolve_num_pairs(self.num_pairs, 2**62)  # type and range; clipped to the batch later
        for name in ("tau1", "tau2", "eps", "score_scale"):
            put(name, _checks.positive_number(getattr(self, name), name))
        if self.mix_mode not in ("append", "replace"):
            raise ValueError(f"mix_mode: expected 'append' or 'replace', got {self.mix_mode!r}")
        weight = _checks.finite_number(self.flsa_weight, "flsa_weight", "a finite weight >= 0")
        if weight < 0 or isinstance(self.flsa_weight, bool):
            raise ValueError(f"flsa_weight: expected a finite weight >= 0, got {self.flsa_weight!r}")
        put("flsa_weight", weight)
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output: expected one of {', '.join(map(repr, OUTPUT_KINDS))}, got {self.output!r}")
        if self.bin_values is not None:
            put("bin_values", _bin_values_tuple(self.bin_values))

    @property
    def uses_flsa(self) -> bool:
        return self.flsa_weight > 0


def _config_field(name: str) -> property:
    return property(lambda self: getattr(self.elta_config, name), doc=f"``elta_config.{name}`` (read-only).")


class ConfigAttributes:
    """Read-only attributes for the settings in ``self.elta_config``, under the same names in
    every adapter (``output`` is ``elta_config.output``: Keras models own that name). The
    settings are not called ``config``: Hugging Face's Trainer expects ``model.config`` to be
    a transformers configuration."""

    elta_config: ELTAConfig


for _name in ELTAConfig.__dataclass_fields__:
    if _name != "output":
        setattr(ConfigAttributes, _name, _config_field(_name))


def _bin_values_tuple(bin_values: Any) -> tuple[float, ...]:
    values = _checks.bin_values_tuple(bin_values)
    if len(values) < 2:
        raise ValueError(f"bin_values: expected at least 2 finite values, got {bin_values!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"bin_values: expected increasing rating values, got {values}")
    return values


def output_kind(config: ELTAConfig, predictions: Tensor, ends_in_softmax: bool = False) -> str:
    """The kind of the model's output: the configured one, or for ``"auto"``: ``"score"``
    for one output per sample, ``"probs"`` when the model ends in a softmax (the adapter
    says so), else ``"logits"``."""
    if config.output != "auto":
        return config.output
    shape = get_backend(predictions).shape(predictions)
    if len(shape) == 1 or shape[-1] == 1:
        return "score"
    return "probs" if ends_in_softmax else "logits"


def _level_values(config: ELTAConfig, levels: int) -> tuple[float, ...]:
    return config.bin_values if config.bin_values is not None else tuple(float(k) for k in range(1, levels + 1))


def check_labels(config: ELTAConfig, labels: Tensor, batch_size: int | None = None, *,
                 validate: bool = True, name: str = "y") -> Tensor:
    """The batch's labels, checked: (B,) / (B, 1) scores or (B, C) distributions, one per
    sample, finite; distributions must be PMFs (raw vote counts are refused), and scores
    must lie on the scale of ``bin_values`` when the config gives them. Returns the labels
    as a float tensor (float32 at least)."""
    backend, labels = _checks.tensor(labels, name)
    shape = _checks.rank(backend, labels, name, (1, 2), "scores (B,), (B, 1) or distributions (B, C)")
    if batch_size is not None and shape[0] != batch_size:
        raise ValueError(f"{name}: expected {batch_size} labels to match the batch of x, got {shape[0]}")
    labels = _checks.float_tensor(backend, labels, name, validate=False)
    distributions = len(shape) == 2 and shape[1] > 1
    if distributions and config.bin_values is not None and len(config.bin_values) != shape[1]:
        raise ValueError(f"{name}: expected distributions over the {len(config.bin_values)} levels of "
                         f"bin_values, got {shape[1]} levels")
    if not validate or not shape[0]:
        return labels
    if distributions:
        _checks.check_distribution(backend, labels, name)
    elif config.bin_values is not None:
        _checks.check_scale(backend, labels, config.bin_values, name)
    else:
        _checks.check_finite_labels(backend, labels, name)
    return labels


def invalid_labels(config: ELTAConfig, labels: Tensor, levels: int | None = None) -> Tensor:
    """1.0 if the batch's labels fail the checks of :func:`check_labels` (and, for score
    labels against ``levels`` outputs, the scale of :func:`check_levels`), else 0.0: a
    tensor computed without any host read, for steps that run traced (the Keras adapter
    sums it as a metric and raises at the end of the batch)."""
    backend, labels = _checks.tensor(labels, "y")
    shape = backend.shape(labels)
    if len(shape) == 2 and shape[1] > 1:
        ok = _checks.distribution_ok(backend, labels, backend.sum(labels, axis=1))
    else:
        values = config.bin_values or (None if levels in (None, 1) else _level_values(config, levels))
        ok = backend.all(backend.isfinite(labels)) if values is None else _checks.scale_ok(backend, labels, values)
    return 1 - backend.cast_like(ok, backend.sum(labels))


def check_output(config: ELTAConfig, predictions: Tensor, labels: Tensor, kind: str, *,
                 validate: bool = True) -> None:
    """Check the model's output against the (TFA-extended) labels: one row per label, the
    levels of a distribution output matching the labels' and ``bin_values``, and score
    labels on the scale of the output's levels."""
    backend = get_backend(predictions)
    shape, label_shape = backend.shape(predictions), get_backend(labels).shape(labels)
    if len(shape) == 0 or shape[0] != label_shape[0]:
        raise ValueError(
            f"model: the output has {shape[0] if shape else 0} rows for {label_shape[0]} labels; TFA's mixed rows "
            "must reach the output (is the head after the layer where TFA mixes?)"
        )
    if kind == "score":
        return
    if kind == "probs" and validate and shape[0]:
        sums = backend.sum(backend.compute_dtype_of(predictions), axis=1)
        off, tolerance = backend.abs(sums - 1), _checks.HALF_DISTRIBUTION_TOLERANCE
        message = ("output: 'probs' expects softmax rows summing to 1, but the model's rows do not; "
                   "pass output='logits' for a head without a softmax")
        _checks.require(backend, predictions, lambda: backend.max(off) <= tolerance,
                 lambda: backend.max_host(off) <= tolerance, message, lambda: message)
    check_levels(config, shape[-1], labels, validate=validate)


def check_levels(config: ELTAConfig, levels: int, labels: Tensor, *, validate: bool = True) -> None:
    """Check labels against a model with ``levels`` outputs per sample (a distribution
    head): the levels of distribution labels and of ``bin_values`` must match, and score
    labels must lie on the scale of the levels' values (``bin_values``, default 1..C)."""
    if config.bin_values is not None and len(config.bin_values) != levels:
        raise ValueError(f"bin_values: expected {levels} values, one per output level of the model, "
                         f"got {len(config.bin_values)}")
    label_backend = get_backend(labels)
    label_shape = label_backend.shape(labels)
    if len(label_shape) == 2 and label_shape[1] > 1:
        if label_shape[1] != levels:
            raise ValueError(f"y: expected distributions over the model's {levels} outputs, "
                             f"got {label_shape[1]} levels")
    elif validate and label_shape[0]:
        _checks.check_scale(label_backend, labels, _level_values(config, levels), "y")


def make_config(config: ELTAConfig | None, options: dict[str, Any], owner: str) -> ELTAConfig:
    """``config``, or an :class:`ELTAConfig` made from ``owner``'s keyword ``options``."""
    if config is not None:
        if options:
            raise ValueError(f"config: give either config= or its fields as keywords, not both "
                             f"(got {', '.join(sorted(options))})")
        if not isinstance(config, ELTAConfig):
            raise ValueError(f"config: expected an elta_core.step.ELTAConfig, got {type(config).__name__}")
        return config
    unknown = sorted(set(options) - set(ELTAConfig.__dataclass_fields__))
    if unknown:
        known = ", ".join(ELTAConfig.__dataclass_fields__)
        raise ValueError(f"{', '.join(unknown)}: not an option of {owner} (its settings: {known})")
    return ELTAConfig(**options)


def mix(config: ELTAConfig, features: Tensor, labels: Tensor, seed: Any = None) -> tuple[Tensor, Tensor, Any]:
    """TFA on one batch [Eqs. 1-4]: draw ``num_pairs`` pairs (clipped to the batch) and mix
    them. Returns ``(features, labels, pairs)``; unchanged (``pairs`` None) when TFA is off."""
    if not config.tfa:
        return features, labels, None
    size = get_backend(features).shape(features)[0]
    count = config.num_pairs if isinstance(config.num_pairs, float) else min(int(config.num_pairs), size)
    pairs = tfa_core.sample_pairs(labels, count, config.tau1, config.tau2, config.eps, seed,
                                  bin_values=config.bin_values, score_scale=config.score_scale, validate=False)
    features, labels = tfa_core.mix(features, labels, *pairs, mode=config.mix_mode, validate=False)
    return features, labels, pairs


class LabelledStep:
    """One labelled batch inside :func:`labelled_step`: its checked labels (extended by TFA
    once :meth:`mix` ran), the TFA pairs, and the features FLSA aligns with their labels.
    The adapter's forward calls :meth:`mix` and :meth:`align` where its hooks are; other
    plug-ins may replace ``labels`` (mixing them as they mix the inputs)."""

    def __init__(self, config: ELTAConfig, labels: Tensor, seed: Any = None):
        self.config, self.labels, self.seed = config, labels, seed
        self.pairs: Any = None
        self.mixed = False
        self.features: Tensor | None = None
        self.feature_labels: Tensor | None = None

    def mix(self, features: Tensor) -> Tensor:
        """TFA on the features, once per batch (a head that runs twice is mixed once)."""
        if self.mixed:
            return features
        self.mixed = True
        features, self.labels, self.pairs = mix(self.config, features, self.labels, self.seed)
        return features

    def align(self, features: Tensor) -> None:
        """Record the features FLSA aligns (the first call's), with the labels they have."""
        if self.features is None:
            self.features, self.feature_labels = features, self.labels


class StepResult(NamedTuple):
    """What :func:`labelled_step` returns: the predictions of the extended batch, its
    labels, ``loss = task_loss + flsa_weight * flsa_loss``, and what the step drew."""

    predictions: Tensor
    labels: Tensor
    loss: Tensor
    task_loss: Tensor
    flsa_loss: Tensor
    pairs: Any
    features: Tensor | None
    feature_labels: Tensor | None


def labelled_step(config: ELTAConfig, labels: Tensor, forward: Callable[[LabelledStep], Tensor], *,
                  kind_of: Callable[[Tensor], str], batch_size: int | None = None, seed: Any = None,
                  user_loss: Callable | None = None, gather: Callable[[Tensor], Tensor] | None = None,
                  validate: bool = True, check_finite: bool | None = None) -> StepResult:
    """One labelled batch, ``L_s`` of Eq. 10: the labels checked once, ``forward(step)``
    (which returns the predictions, calling ``step.mix`` and ``step.align`` where the
    features are), the output checked once against the extended labels, the losses.
    ``validate=False`` skips the checks that read values (inside a traced graph);
    ``check_finite=False`` the non-finite check of the losses."""
    step = LabelledStep(config, check_labels(config, labels, batch_size, validate=validate), seed)
    predictions = forward(step)
    kind = kind_of(predictions)
    check_output(config, get_backend(predictions).stop_gradient(predictions), step.labels, kind, validate=validate)
    result = losses_of(config, predictions, step.labels, step.features, step.feature_labels, kind=kind,
                       user_loss=user_loss, gather=gather, check_finite=check_finite)
    return StepResult(predictions, step.labels, *result, step.pairs, step.features, step.feature_labels)


def pseudo_labelled_loss(config: ELTAConfig, predictions: Tensor, labels: Tensor, kind: str,
                         user_loss: Callable | None = None, *, validate: bool = True) -> Tensor:
    """``L_u`` of Eq. 10 with separate batches: the task loss on a pseudo-labelled batch
    (no TFA, no FLSA), its labels and the output checked as a labelled step checks them."""
    labels = check_labels(config, labels, get_backend(predictions).shape(predictions)[0], validate=validate)
    check_output(config, predictions, labels, kind, validate=validate)
    return task_loss(config, predictions, labels, kind, user_loss)


class StepLosses(NamedTuple):
    """``loss = task_loss + flsa_weight * flsa_loss``; ``flsa_loss`` is 0 when FLSA is off."""

    loss: Tensor
    task_loss: Tensor
    flsa_loss: Tensor


def task_loss(config: ELTAConfig, predictions: Tensor, labels: Tensor, kind: str,
              user_loss: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """The task loss: the user's ``fn(predictions, labels)``, or EMD for distribution labels
    and MSE on scores otherwise (:func:`elta_core.losses.task_loss`)."""
    if user_loss is not None:
        return user_loss(predictions, labels)
    return losses.task_loss(predictions, labels, kind, config.bin_values, validate=False)


def flsa_term(config: ELTAConfig, features: Tensor, labels: Tensor,
              gather: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The FLSA loss [Eqs. 5-6] on the features (flattened) and the labels' scores;
    ``gather`` concatenates both across processes (DDP's global batch)."""
    backend = get_backend(features)
    flat = backend.reshape(features, (backend.shape(features)[0], -1))
    scores = losses.label_scores(labels, config.bin_values, validate=False)
    if gather is not None:
        flat, scores = gather(flat), gather(scores)
    return flsa.alignment_loss(flat, scores, validate=False)


def losses_of(config: ELTAConfig, predictions: Tensor, labels: Tensor, features: Tensor | None = None,
              feature_labels: Tensor | None = None, *, kind: str, user_loss: Callable | None = None,
              gather: Callable[[Tensor], Tensor] | None = None, check_finite: bool | None = None) -> StepLosses:
    """Task loss, FLSA term and their sum for one step. ``features`` are what FLSA aligns
    (None: FLSA is skipped), with ``feature_labels`` (default ``labels``). With
    ``check_finite`` (default the config's), a NaN/Inf term raises ``FloatingPointError``
    naming it; pass False where values cannot be read (inside a traced graph)."""
    task = task_loss(config, predictions, labels, kind, user_loss)
    backend = get_backend(task)
    if config.uses_flsa and features is not None:
        alignment = flsa_term(config, features, labels if feature_labels is None else feature_labels, gather)
        total = task + config.flsa_weight * backend.cast_like(alignment, task)
    else:
        alignment = backend.constant(0.0, task)
        total = task
    if config.check_finite if check_finite is None else check_finite:
        raise_if_not_finite({"task loss": task, "FLSA loss": alignment})
    return StepLosses(total, task, alignment)


def raise_if_not_finite(terms: dict[str, Tensor]) -> None:
    """``FloatingPointError`` naming the first term that is NaN or Inf: one host read of the
    terms' sum (none on an accelerator, where each term's check is scheduled instead)."""
    first = next(iter(terms.values()))
    backend = get_backend(first)
    if backend.defers(first):
        for name, value in terms.items():
            backend.check_async(backend.all(backend.isfinite(backend.stop_gradient(value))), f"the {name} is NaN or Inf")
        return
    total = backend.stop_gradient(first)
    for value in list(terms.values())[1:]:
        total = total + backend.cast_like(backend.stop_gradient(value), total)
    if math.isfinite(backend.max_host(total)):
        return
    for name, value in terms.items():
        if not backend.all_finite_host(backend.stop_gradient(value)):
            raise FloatingPointError(
                f"the {name} is {float(backend.to_numpy(value).reshape(-1)[0])}: training diverged or got a "
                "non-finite input (check the learning rate, the inputs, the labels and the model's output)"
            )
