"""How :class:`~elta_core.adapters.torch.ELTAWrapper` calls its peers (the plug-ins of
:mod:`elta_core.adapters.torch.peers`) at their points of a training step: C-Mixup on
the input or the head's input, FDS on the head's input before TFA mixes it, LDS and
Balanced MSE in the task loss, RankSim's regulariser beside FLSA, FDS's statistics at
the end of an epoch; and the task loss outside a labelled step (``L_u`` on
pseudo-labelled batches, and evaluation as Hugging Face's Trainer asks for it)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from elta_core import losses as core_losses
from elta_core import step as core_step
from elta_core.adapters.torch.modules import as_float_labels
from elta_core.adapters.torch.output import EvaluationOutput
from elta_core.adapters.torch.peers import Peer


def _float32(like: torch.Tensor):
    """No autocast inside: the peers' sums and ranks run in float32 whatever the training
    precision (a bf16 similarity matrix ties and reorders RankSim's ranks)."""
    return torch.autocast(like.device.type, enabled=False)


def _widened(tensor: torch.Tensor) -> torch.Tensor:
    """Half tensors as float32; float32 and float64 as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class PeerSteps:
    """The peer hooks of the wrapper (a mixin: the wrapper has ``peers``, ``elta_config``,
    ``generator``, ``task_loss_fn``, ``output_kind`` and the current ``_batch``)."""

    def _peers_at(self, stage: str) -> list[Peer]:
        return [p for p in self.peers if p.stage == stage]

    def _scores(self, labels: torch.Tensor) -> torch.Tensor:
        with _float32(labels):  # a distribution's score is a matmul: half precision under autocast otherwise
            return core_losses.label_scores(labels, self.elta_config.bin_values, validate=False)

    def _peers_on_head_input(self, module, args):
        """The head's input calibrated by the peers at the head, in a training step (then
        mixed too, once, should the head run twice) or in a feature pass
        (:meth:`observe_features`: never mixed)."""
        step = self._batch
        labels = step.labels if step is not None else self._observed_labels
        if labels is None or not args or not isinstance(args[0], torch.Tensor):
            return None
        features = args[0]
        mixing = step is not None and not step.peer_mixed
        for peer in self._peers_at("head"):
            with _float32(features):  # FDS's statistics: float32 under autocast, as FLSA
                calibrated = peer.calibrate(_widened(features), _widened(self._scores(labels)))
            features = calibrated.to(features.dtype)
            if mixing:
                features, labels = peer.mix(features, labels, self._scores(labels), self.generator)
        if step is not None:
            step.labels, step.peer_mixed = labels, True
        return (features,) + tuple(args[1:])

    def _mix_input_with_peers(self, x: Any, step: core_step.LabelledStep) -> Any:
        for peer in self._peers_at("input"):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{peer.name}: at='input' mixes the input tensor, but the model's input is a "
                                 f"{type(x).__name__}; use {type(peer).__name__}(at='features')")
            x, step.labels = peer.mix(x, step.labels, self._scores(step.labels), self.generator)
        return x

    def _check_peer_levels(self, predictions: torch.Tensor) -> None:
        """The rating value of each output level, for the peers that bin training labels."""
        levels = self.elta_config.bin_values
        if levels is None and self.output_kind(predictions) != "score":
            levels = tuple(float(k) for k in range(1, predictions.shape[-1] + 1))
        for peer in self.peers:
            peer.check_levels(levels)

    def _task_loss_with_peers(self) -> Callable | None:
        """The task loss as the peers change it: LDS weights each sample's loss, Balanced
        MSE replaces it by BMC on the predicted and true scores; else the user's or None
        (the core's default)."""
        changing = next((p for p in self.peers if p.replaces_task_loss), None)
        if changing is None:
            return self.task_loss_fn
        bin_values = self.elta_config.bin_values

        def loss(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            self._check_peer_levels(predictions)  # before the bins are read
            kind, scores = self.output_kind(predictions), self._scores(labels)
            weights = changing.sample_weights(scores)
            if weights is not None:
                return core_losses.task_loss(predictions, labels, kind, bin_values, validate=False, weights=weights)
            predicted = core_losses.output_scores(predictions, kind, bin_values, validate=False)
            return changing.task_loss(predicted, scores)

        return loss

    def _peer_regularisers(self, result: core_step.StepResult) -> dict[str, torch.Tensor]:
        regularising = [p for p in self.peers if p.needs_features]
        if not regularising or result.features is None:
            return {}
        scores = _widened(self._scores(result.feature_labels))
        with _float32(result.features):  # RankSim's similarities and ranks: float32 under autocast, as FLSA
            return {p.name: p.regulariser(_widened(result.features), scores, self.generator) for p in regularising}

    @property
    def wants_feature_pass(self) -> bool:
        return any(p.feature_pass for p in self.peers)

    @torch.no_grad()
    def observe_features(self, x: Any, y: torch.Tensor) -> None:
        """One batch of the end-of-epoch feature pass (FDS's statistics, as its authors
        collect them): the model's forward as it is (train mode), no gradient, no TFA, no
        mixing, the peers that want the pass collecting the head's input. ``fit`` runs it
        over the training loader after each epoch's steps; a custom loop calls it itself."""
        like = x if isinstance(x, torch.Tensor) else next(self.model.parameters())
        with contextlib.ExitStack() as collecting:
            for peer in self.peers:
                if peer.feature_pass:
                    collecting.enter_context(peer.collecting())
            self._observed_labels = as_float_labels(y, like)
            try:
                self.model(x)
            finally:
                self._observed_labels = None

    def end_epoch(self) -> None:
        """Tell the peers that an epoch ended (FDS folds the epoch's feature statistics
        into its running ones). ``fit`` calls it; a custom loop calls it once per epoch."""
        for peer in self.peers:
            peer.end_epoch()

    def _evaluation(self, x: Any, labels: torch.Tensor) -> EvaluationOutput:
        predictions = self.model(x)
        predictions = getattr(predictions, "logits", predictions)
        return EvaluationOutput(self._plain_task_loss(x, labels, predictions, self._task_loss_with_peers()), predictions)

    def unlabelled_loss(self, x: Any, y: torch.Tensor) -> torch.Tensor:
        """``L_u`` of Eq. 10 with ``round2="separate"``: the task loss on pseudo-labelled
        samples (no TFA, no FLSA)."""
        loss = self._plain_task_loss(x, y, self.model(x), self.task_loss_fn)
        if self.elta_config.check_finite:
            core_step.raise_if_not_finite({"pseudo-label task loss": loss})
        return loss

    def _plain_task_loss(self, x: Any, y: torch.Tensor, predictions: torch.Tensor, user_loss) -> torch.Tensor:
        like = x if isinstance(x, torch.Tensor) else next(self.model.parameters())
        return core_step.pseudo_labelled_loss(self.elta_config, predictions, as_float_labels(y, like),
                                              self.output_kind(predictions), user_loss)
