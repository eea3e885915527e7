"""``ELTAWrapper``: TFA and FLSA for any ``nn.Module``, through forward hooks.

The wrapped model's code is not touched. A forward pre-hook on the head (or a forward
hook on another named layer) mixes the features of the batch (TFA) and records the
features that FLSA aligns; the step itself is :mod:`elta_core.step`. The hooks act only
inside a training call ``wrapper(x, y)``; ``wrapper(x)`` and eval mode return exactly
what the model returns.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from elta_core import step as core_step
from elta_core.adapters.torch.distributed import gather_with_grad
from elta_core.adapters.torch.modules import as_float_labels, ends_in_softmax, find_module, generator_of, model_and_head
from elta_core.adapters.torch.output import ELTAOutput
from elta_core.adapters.torch.peering import PeerSteps
from elta_core.adapters.torch.peers import Peer, check_peers


class ELTAWrapper(PeerSteps, nn.Module, core_step.ConfigAttributes):
    """Wrap a model so that ``wrapper(x, y)`` trains it with TFA and FLSA.

    Args:
        model: the model, unchanged. Or pass ``backbone=`` and ``head=`` modules instead.
        head: where the head starts: a submodule name (``"fc"``, ``"classifier"``,
            ``"head"``), the module itself, or ``"auto"`` (timm's classifier, else ``fc``,
            ``classifier``, ``heads``, ``head``; the choice is in ``head_name`` and logged).
        mix_at: where TFA mixes: ``None`` for the features that enter the head, a layer
            name to mix that layer's output, or ``"input"`` for pixel mixup (Table 5).
        align_at: the features FLSA aligns: ``None`` for the TFA layer (the head's input
            when TFA mixes the input) or a layer name.
        flsa_scope: ``"local"`` (this process's batch) or ``"global"`` (gathered across
            DDP ranks with gradients, equal to the single-process loss on the whole batch).
        task_loss: ``fn(predictions, labels) -> scalar``; default EMD for distribution
            labels, MSE for scalar labels.
        peers: established imbalanced-regression methods to train with, alone (``tfa=False,
            flsa_weight=0``) or beside TFA and FLSA: instances of
            :mod:`elta_core.adapters.torch.peers` (``LDS``, ``FDS``, ``RankSim``,
            ``CMixup``, ``BalancedMSE``). Call :meth:`end_epoch` after each epoch
            (``fit`` does); FDS updates its statistics there.
        seed: None (torch's global generator), an int or a ``torch.Generator``. With DDP,
            give each rank its own seed.
        config: an :class:`elta_core.step.ELTAConfig`; or give its fields as keywords
            (``tfa``, ``num_pairs``, ``tau1``, ``tau2``, ``eps``, ``mix_mode``,
            ``flsa_weight``, ``output``, ``bin_values``, ``score_scale``, ``check_finite``),
            whose defaults are the core's.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Module | None = None,
        *,
        backbone: nn.Module | None = None,
        mix_at: str | None = None,
        align_at: str | None = None,
        flsa_scope: Literal["local", "global"] = "local",
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        seed: int | torch.Generator | None = None,
        config: core_step.ELTAConfig | None = None,
        peers: Sequence[Peer] = (),
        **options: Any,
    ):
        super().__init__()
        self.elta_config = core_step.make_config(config, options, "ELTAWrapper")
        self.peers = nn.ModuleList(check_peers(peers, task_loss is not None))
        for peer in self.peers:
            peer.bind(self.elta_config)
        self.model, self.head_name = model_and_head(model, head, backbone)
        if head == "auto":
            logging.getLogger("elta_core").info("ELTAWrapper: head=%r chosen for %s", self.head_name,
                                                type(self.model).__name__)
        if flsa_scope not in ("local", "global"):
            raise ValueError(f"flsa_scope: expected 'local' or 'global', got {flsa_scope!r}")
        self.flsa_scope, self.task_loss_fn, self.mix_at = flsa_scope, task_loss, mix_at
        self.generator = generator_of(seed)
        self._batch: core_step.LabelledStep | None = None
        self._observed_labels: torch.Tensor | None = None  # in a feature pass (PeerSteps.observe_features)
        head_module = find_module(self.model, self.head_name, "head")
        self._ends_in_softmax = ends_in_softmax(head_module)
        self._register_hooks(head_module, mix_at, align_at)

    output = property(lambda self: self.elta_config.output, doc="``elta_config.output`` (read-only).")

    def _register_hooks(self, head_module: nn.Module, mix_at: str | None, align_at: str | None) -> None:
        if self._peers_at("head"):  # first: the features TFA mixes and FLSA aligns are the calibrated ones
            head_module.register_forward_pre_hook(self._peers_on_head_input)
        if mix_at is None:
            head_module.register_forward_pre_hook(self._mix_head_input)
        elif mix_at != "input":
            find_module(self.model, mix_at, "mix_at").register_forward_hook(self._mix_layer_output)
        if align_at is None and mix_at not in (None, "input"):
            align_at = mix_at
        self.align_at = align_at
        if align_at is None:
            head_module.register_forward_pre_hook(self._capture_head_input)
        else:
            find_module(self.model, align_at, "align_at").register_forward_hook(self._capture_layer_output)

    # -- hooks: active only inside a training call, on its step ---------------------
    def _mix(self, features: Any) -> Any:
        return features if self._batch is None or not isinstance(features, torch.Tensor) else self._batch.mix(features)

    def _mix_head_input(self, module, args):
        if self._batch is None or not args:
            return None
        return (self._mix(args[0]),) + tuple(args[1:])

    def _mix_layer_output(self, module, args, output):
        return None if self._batch is None else self._mix(output)

    def _capture(self, features) -> None:
        if self._batch is not None and isinstance(features, torch.Tensor):
            self._batch.align(features)

    def _capture_head_input(self, module, args):
        self._capture(args[0] if args else None)

    def _capture_layer_output(self, module, args, output):
        self._capture(output)

    # -- forward -----------------------------------------------------------------
    def forward(self, x: Any, y: torch.Tensor | None = None, *, labels: torch.Tensor | None = None) -> Any:
        """``wrapper(x)``: the model's output, untouched. ``wrapper(x, y)`` (or ``labels=y``,
        as Hugging Face's Trainer passes them) in train mode: an :class:`ELTAOutput` with
        the loss to backpropagate, from one :func:`elta_core.step.labelled_step`."""
        if labels is not None:
            if y is not None:
                raise ValueError("labels: give the labels once, as y or as labels=")
            if not self.training:  # Hugging Face's evaluate and predict: the loss first, then the output
                return self._evaluation(x, labels)
            y = labels
        if y is None or not self.training:
            return self.model(x)
        like = x if isinstance(x, torch.Tensor) else next(self.model.parameters())
        result = core_step.labelled_step(
            self.elta_config, as_float_labels(y, like), lambda step: self._forward_step(x, step),
            kind_of=self.output_kind, batch_size=x.shape[0] if isinstance(x, torch.Tensor) else None,
            seed=self.generator, user_loss=self._task_loss_with_peers(),
            gather=gather_with_grad if self.flsa_scope == "global" else None)
        if self.peers:
            self._check_peer_levels(result.predictions)
        extra = self._peer_regularisers(result)
        loss = result.loss
        if extra:
            if self.elta_config.check_finite:
                core_step.raise_if_not_finite({f"{name} loss": value for name, value in extra.items()})
            loss = loss + sum(v.to(loss.dtype) for v in extra.values())
        return ELTAOutput(result.predictions, result.labels, loss, result.task_loss, result.flsa_loss, result.pairs,
                          result.features, extra)

    def _forward_step(self, x: Any, step: core_step.LabelledStep) -> torch.Tensor:
        """The model's forward on one step, the hooks mixing and recording on it."""
        step.peer_mixed = False
        self._batch = step
        try:
            x = self._mix_input_with_peers(x, step)
            if self.mix_at == "input":
                x = self._mix(x)
            predictions = self.model(x)
        finally:
            self._batch = None
        self._check_hooks_ran(step)
        predictions = getattr(predictions, "logits", predictions)  # a Hugging Face model's output
        if not isinstance(predictions, torch.Tensor):
            raise ValueError(f"model: expected the model to return a tensor, got {type(predictions).__name__}")
        return predictions

    def _check_hooks_ran(self, step: core_step.LabelledStep) -> None:
        if self.elta_config.tfa and not step.mixed:
            where = self.mix_at or self.head_name
            raise ValueError(f"mix_at: the layer {where!r} was not called in the model's forward, so TFA could "
                             "not mix; give the head or layer that the forward really runs")
        if (self.elta_config.uses_flsa or any(p.needs_features for p in self.peers)) and step.features is None:
            where = self.align_at or self.head_name
            raise ValueError(f"align_at: the layer {where!r} was not called in the model's forward, so FLSA and "
                             "RankSim have no features; give the head or layer that the forward really runs")

    def output_kind(self, predictions: torch.Tensor) -> str:
        """``"logits"``, ``"probs"`` or ``"score"``: see :func:`elta_core.step.output_kind`."""
        return core_step.output_kind(self.elta_config, predictions, self._ends_in_softmax)
