"""What every peer is: the :class:`Peer` hooks :class:`~elta_core.adapters.torch.ELTAWrapper`
calls, and the check of a wrapper's ``peers`` argument."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from elta_core import _checks, losses


def fraction(value: Any, name: str) -> float:
    number = _checks.finite_number(value, name, "a number in [0, 1)")
    if not 0 <= number < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return number


def scores_of(labels: Any, bin_values: Any, name: str) -> torch.Tensor:
    """Scores (N,) of labels given as scores or distributions (their mean score)."""
    tensor = torch.as_tensor(np.asarray(labels, dtype=np.float64) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.ndim not in (1, 2) or tensor.shape[0] < 1:
        raise ValueError(f"{name}: expected the training labels, scores (N,) or distributions (N, C), "
                         f"got shape {tuple(tensor.shape)}")
    try:
        return losses.label_scores(tensor.double(), bin_values)  # checked: finite, PMF rows
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


class Peer(nn.Module):
    """A plug-in of :class:`ELTAWrapper`; every hook does nothing unless overridden. The
    wrapper calls :meth:`bind` once with its :class:`~elta_core.step.ELTAConfig`.

    Class attributes say where it acts: ``stage`` ``"input"`` (:meth:`mix` on the model's
    input), ``"head"`` (:meth:`calibrate`, then :meth:`mix`, on the head's input) or None;
    ``replaces_task_loss`` (:meth:`sample_weights` weights the default task loss, else
    :meth:`task_loss` replaces it); ``needs_features`` (:meth:`regulariser` reads the
    features FLSA aligns); ``needs_train_labels`` (its constructor takes them);
    ``feature_pass`` (after each epoch's steps it reads the head's input of every training
    batch in a pass of its own, without gradients: :meth:`collecting`)."""

    name = "peer"
    stage: str | None = None
    replaces_task_loss = False
    needs_features = False
    needs_train_labels = False
    feature_pass = False

    def bind(self, config: Any) -> None:
        self.bin_values = config.bin_values
        self.score_scale = config.score_scale

    def check_levels(self, level_values: Sequence[float] | None) -> None:
        """Called at every training step with the rating value of each of the model's
        output levels (None for a score head without ``bin_values``)."""

    def mix(self, x: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, labels

    def calibrate(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return features

    def sample_weights(self, scores: torch.Tensor) -> torch.Tensor | None:
        return None

    def task_loss(self, predicted_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor | None:
        return None

    def regulariser(self, features: torch.Tensor, scores: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """The end-of-epoch feature pass (``feature_pass``): :meth:`calibrate` collects in it."""
        yield

    def end_epoch(self) -> None:
        """Called once at the end of every training epoch (``fit`` does it)."""

def check_peers(peers: Sequence[Peer], user_task_loss: bool) -> list[Peer]:
    """The wrapper's ``peers`` argument, checked: Peer instances, each kind once, at most
    one that replaces the task loss, and none of those beside a user ``task_loss``."""
    peers = list(peers)
    for peer in peers:
        if not isinstance(peer, Peer):
            raise ValueError(f"peers: expected plug-ins of elta_core.adapters.torch.peers "
                             f"({', '.join(registered_class_names())}), got {type(peer).__name__}")
    names = [p.name for p in peers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"peers: {', '.join(twice)} given more than once")
    replacing = task_loss_changers(peers)
    if replacing and user_task_loss:
        raise ValueError(f"peers: {replacing[0]} changes the task loss, so it cannot be combined with a task_loss "
                         "function; leave task_loss out, or the peer")
    return peers


def task_loss_changers(peers: Sequence[Peer | type[Peer]]) -> list[str]:
    """The names of the peers (instances or classes) that change the task loss; more than
    one is refused by name."""
    replacing = [peer.name for peer in peers if peer.replaces_task_loss]
    if len(replacing) > 1:
        raise ValueError(f"peers: {' and '.join(replacing)} both change the task loss; use one of them")
    return replacing


def make_peer(name: str, train_labels: Any, settings: dict[str, Any] | None = None) -> Peer:
    """The peer registered as ``name``, with ``settings`` (``--peer-settings``: keyword
    arguments of its class, a number converted to the type of the argument's default) in
    place of its defaults; ``train_labels`` for a peer that bins them (LDS, FDS)."""
    from elta_core.peer_names import peer_class

    kind = peer_class(name)
    parameters = {n: p.default for n, p in inspect.signature(kind.__init__).parameters.items()
                  if n not in ("self", "train_labels") and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    arguments = {}
    for setting, value in (settings or {}).items():
        if setting not in parameters:
            raise ValueError(f"peer_settings: {name} has no setting {setting!r} (its settings: "
                             f"{', '.join(parameters)})")
        arguments[setting] = _as_type_of(parameters[setting], value, f"peer_settings: {name}.{setting}")
    try:
        return kind(train_labels, **arguments) if kind.needs_train_labels else kind(**arguments)
    except ValueError as error:
        if not arguments:
            raise
        raise ValueError(f"peer_settings: {name}: {error}") from None


def _as_type_of(default: Any, value: Any, name: str) -> Any:
    if isinstance(default, str):
        return value if isinstance(value, str) else f"{value:g}"
    if isinstance(value, str) or isinstance(default, (bool, tuple, list)):
        raise ValueError(f"{name}: expected {'a number' if isinstance(value, str) else 'a setting of one value'}, "
                         f"got {value!r}")
    if isinstance(default, int):
        if value != int(value):
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def registered_class_names() -> list[str]:
    from elta_core.peer_names import PEER_NAMES, peer_class

    return [peer_class(name).__name__ for name in PEER_NAMES]
