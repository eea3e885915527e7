"""``ELTAWrapper``: TFA and FLSA for any ``nn.Module``, through forward hooks.

The wrapped model's code is not touched. A forward pre-hook on the head (or a forward
hook on another named layer) mixes the features of the batch (TFA, Eqs. 1-4) and records
the features that FLSA aligns (Eqs. 5-6). The hooks act only inside a training call
``wrapper(x, y)``; ``wrapper(x)`` and eval mode return exactly what the model returns.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from elta_core import _checks, losses
from elta_core import tfa as tfa_core
from elta_core import flsa as flsa_core
from elta_core.adapters.torch.distributed import gather_with_grad
from elta_core.adapters.torch.modules import as_float_labels, find_module, name_of

OutputKind = Literal["auto", "logits", "probs", "score"]


@dataclass
class ELTAOutput:
    """What a training call ``wrapper(x, y)`` returns.

    Attributes:
        predictions: the model's output for the B + K rows (K mixed by TFA).
        labels: the labels extended by TFA, (B + K,) scores or (B + K, C) distributions.
        loss: ``task_loss + flsa_weight * flsa_loss``, what to backpropagate.
        task_loss: EMD (distribution labels), MSE (scalar labels) or the user's loss.
        flsa_loss: the FLSA term before its weight (0 when FLSA is off).
        pairs: the TFA pairs drawn (``None`` when TFA is off).
        features: the features FLSA aligned (``None`` when FLSA is off).
    """

    predictions: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor
    task_loss: torch.Tensor
    flsa_loss: torch.Tensor
    pairs: tfa_core.Pairs | None = None
    features: torch.Tensor | None = None


class _Step:
    """State of one training forward, read and written by the hooks."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels
        self.mixed = False
        self.pairs: tfa_core.Pairs | None = None
        self.features: torch.Tensor | None = None
        self.feature_labels: torch.Tensor | None = None


class _BackboneHead(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


class ELTAWrapper(nn.Module):
    """Wrap a model so that ``wrapper(x, y)`` trains it with TFA and FLSA.

    Args:
        model: the model, unchanged. Or pass ``backbone=`` and ``head=`` modules instead.
        head: where the head starts: a submodule name (``"fc"``, ``"classifier"``,
            ``"head"``) or the module itself.
        tfa: switch TFA on or off.
        num_pairs: TFA pairs per batch, an int (clipped to the batch size) or a fraction
            of the batch. The authors' code mixes 1 pair per batch.
        tau1, tau2, eps: TFA temperatures (Eqs. 2-3) in label units.
        mix_at: where TFA mixes: ``None`` for the features that enter the head, a layer
            name to mix that layer's output, or ``"input"`` for pixel mixup (Table 5).
        mix_mode: ``"append"`` (authors) or ``"replace"``, see :func:`elta_core.tfa.mix`.
        flsa_weight: gamma, the weight of the FLSA loss; 0 switches FLSA off.
        align_at: the features FLSA aligns: ``None`` for the TFA layer (the head's input
            when TFA mixes the input) or a layer name.
        flsa_scope: ``"local"`` (this process's batch) or ``"global"`` (gathered across
            DDP ranks with gradients, equal to the single-process loss on the whole batch).
        task_loss: ``fn(predictions, labels) -> scalar``; default EMD for distribution
            labels, MSE for scalar labels.
        output: what the model returns: ``"logits"`` over C levels, ``"probs"``
            (softmax already applied, NIMA-style), ``"score"`` (a scalar regression) or
            ``"auto"`` (``"score"`` when the last dim is 1, else ``"logits"``).
        bin_values: rating value of each level (default 1..C).
        score_scale: label units per point of a 1..10 scale, so that the temperatures keep
            their meaning (e.g. 1/9 for AADB's 0..1 scores, 4/9 for PARA's 1..5).
        seed: None (torch's global generator), an int or a ``torch.Generator``. With DDP,
            give each rank its own seed.
        check_finite: raise ``FloatingPointError`` naming the term if a loss is NaN/Inf.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Module | None = None,
        *,
        backbone: nn.Module | None = None,
        tfa: bool = True,
        num_pairs: int | float = 1,
        tau1: float = 0.2,
        tau2: float = 4.0,
        eps: float = 1e-2,
        mix_at: str | None = None,
        mix_mode: Literal["append", "replace"] = "append",
        flsa_weight: float = 1.0,
        align_at: str | None = None,
        flsa_scope: Literal["local", "global"] = "local",
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        output: OutputKind = "auto",
        bin_values: Any = None,
        score_scale: float = 1.0,
        seed: int | torch.Generator | None = None,
        check_finite: bool = True,
    ):
        super().__init__()
        if model is None:
            if backbone is None or not isinstance(head, nn.Module):
                raise ValueError("model: expected a model with head=..., or backbone= and head= modules")
            model, head = _BackboneHead(backbone, head), "head"
        elif backbone is not None:
            raise ValueError("backbone: pass either a model with head=..., or backbone= and head=, not both")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if head is None:
            raise ValueError('head: expected the name of the head module (e.g. "fc") or the module itself')
        self.model = model
        self.head_name = name_of(model, head, "head") if isinstance(head, nn.Module) else head
        head_module = find_module(model, self.head_name, "head")

        self.tfa = bool(tfa)
        tfa_core.resolve_num_pairs(num_pairs, sys.maxsize)  # checks the type and range only
        self.num_pairs = num_pairs
        self.tau1 = _checks.positive_number(tau1, "tau1")
        self.tau2 = _checks.positive_number(tau2, "tau2")
        self.eps = _checks.positive_number(eps, "eps")
        if mix_mode not in ("append", "replace"):
            raise ValueError(f"mix_mode: expected 'append' or 'replace', got {mix_mode!r}")
        self.mix_mode = mix_mode
        self.flsa_weight = float(flsa_weight)
        if not self.flsa_weight >= 0 or self.flsa_weight == float("inf"):
            raise ValueError(f"flsa_weight: expected a finite weight >= 0, got {flsa_weight!r}")
        if flsa_scope not in ("local", "global"):
            raise ValueError(f"flsa_scope: expected 'local' or 'global', got {flsa_scope!r}")
        self.flsa_scope = flsa_scope
        if output not in ("auto", "logits", "probs", "score"):
            raise ValueError(f"output: expected 'auto', 'logits', 'probs' or 'score', got {output!r}")
        self.output = output
        self.task_loss_fn = task_loss
        self.bin_values = bin_values
        self.score_scale = _checks.positive_number(score_scale, "score_scale")
        self.check_finite = check_finite
        self.mix_at = mix_at
        self.align_at = align_at
        if isinstance(seed, int) and not isinstance(seed, bool):
            seed = torch.Generator().manual_seed(seed)
        elif seed is not None and not isinstance(seed, torch.Generator):
            raise ValueError(f"seed: expected None, an int or a torch.Generator, got {type(seed).__name__}")
        self.generator = seed
        self._step: _Step | None = None

        # TFA: mix at the head's input (pre-hook) or at a layer's output (hook).
        if mix_at is None:
            head_module.register_forward_pre_hook(self._mix_head_input)
        elif mix_at != "input":
            find_module(model, mix_at, "mix_at").register_forward_hook(self._mix_layer_output)
        # FLSA: capture the features to align.
        if align_at is None and mix_at not in (None, "input"):
            align_at = mix_at
        if align_at is None:
            head_module.register_forward_pre_hook(self._capture_head_input)
        else:
            find_module(model, align_at, "align_at").register_forward_hook(self._capture_layer_output)

    # -- hooks -------------------------------------------------------------------
    def _mix(self, features: torch.Tensor) -> torch.Tensor:
        step = self._step
        if not self.tfa or step.mixed or not isinstance(features, torch.Tensor):
            return features
        step.mixed = True
        size = features.shape[0]
        count = self.num_pairs if isinstance(self.num_pairs, float) else min(int(self.num_pairs), size)
        step.pairs = tfa_core.sample_pairs(
            step.labels, count, self.tau1, self.tau2, self.eps, self.generator,
            bin_values=self.bin_values, score_scale=self.score_scale, validate=False,
        )
        features, step.labels = tfa_core.mix(features, step.labels, *step.pairs, mode=self.mix_mode, validate=False)
        return features

    def _mix_head_input(self, module, args):
        if self._step is None or not args:
            return None
        return (self._mix(args[0]),) + tuple(args[1:])

    def _mix_layer_output(self, module, args, output):
        if self._step is None:
            return None
        return self._mix(output)

    def _capture(self, features) -> None:
        step = self._step
        if step is None or step.features is not None or not isinstance(features, torch.Tensor):
            return
        step.features = features
        step.feature_labels = step.labels

    def _capture_head_input(self, module, args):
        if args:
            self._capture(args[0])
        return None

    def _capture_layer_output(self, module, args, output):
        self._capture(output)
        return None

    # -- forward -----------------------------------------------------------------
    def forward(self, x: Any, y: torch.Tensor | None = None) -> Any:
        """``wrapper(x)``: the model's output, untouched. ``wrapper(x, y)`` in train mode:
        an :class:`ELTAOutput` with the loss to backpropagate."""
        if y is None or not self.training:
            return self.model(x)
        labels = self._check_labels(x, y)
        step = _Step(labels)
        self._step = step
        try:
            if self.mix_at == "input":
                x = self._mix(x)
            predictions = self.model(x)
        finally:
            self._step = None
        return self._losses(predictions, step)

    def unlabelled_loss(self, x: Any, y: torch.Tensor) -> torch.Tensor:
        """``L_u`` of Eq. 10: the task loss on pseudo-labelled samples (no TFA, no FLSA)."""
        labels = self._check_labels(x, y)
        loss = self._task_loss(self.model(x), labels)
        if self.check_finite and not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"ELTAWrapper: the pseudo-label task loss is {loss.detach().float().item()}")
        return loss

    def _check_labels(self, x: Any, y: Any) -> torch.Tensor:
        batch = x.shape[0] if isinstance(x, torch.Tensor) else None
        like = x if isinstance(x, torch.Tensor) else next(self.model.parameters())
        labels = as_float_labels(y, like)
        if labels.dim() not in (1, 2):
            raise ValueError(f"y: expected scores (B,), (B, 1) or distributions (B, C), got shape {tuple(labels.shape)}")
        if batch is not None and labels.shape[0] != batch:
            raise ValueError(f"y: expected {batch} labels to match the batch of x, got {labels.shape[0]}")
        if not torch.isfinite(labels).all():
            raise ValueError("y: expected finite labels, found NaN or Inf")
        if labels.dim() == 2 and labels.shape[1] > 1:
            losses.scores_from_distribution(labels, self.bin_values)  # checks the PMFs
        return labels

    def output_kind(self, predictions: torch.Tensor) -> str:
        if self.output != "auto":
            return self.output
        return "score" if predictions.dim() == 1 or predictions.shape[-1] == 1 else "logits"

    def predicted_scores(self, predictions: torch.Tensor) -> torch.Tensor:
        """Scores (N,) from the model's raw output, whatever its kind."""
        kind = self.output_kind(predictions)
        return losses.output_scores(predictions.float(), kind, self.bin_values, validate=False)

    def _task_loss(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task_loss_fn is not None:
            return self.task_loss_fn(predictions, labels)
        return losses.task_loss(predictions, labels, self.output_kind(predictions), self.bin_values,
                                validate=False)

    def _losses(self, predictions: torch.Tensor, step: _Step) -> ELTAOutput:
        if not isinstance(predictions, torch.Tensor):
            raise ValueError(f"model: expected the model to return a tensor, got {type(predictions).__name__}")
        if predictions.shape[0] != step.labels.shape[0]:
            raise ValueError(
                f"model: the head returned {predictions.shape[0]} rows for {step.labels.shape[0]} labels; "
                "TFA's mixed rows must reach the output (is the head after the mixing layer?)"
            )
        task = self._task_loss(predictions, step.labels)
        flsa_loss = predictions.new_zeros((), dtype=torch.float32)
        if self.flsa_weight > 0 and step.features is not None:
            features, labels = step.features, step.feature_labels
            scores = losses.label_scores(labels, self.bin_values, validate=False)
            if self.flsa_scope == "global":
                features = gather_with_grad(features.reshape(features.shape[0], -1))
                scores = gather_with_grad(scores)
            flsa_loss = flsa_core.alignment_loss(features, scores, validate=False)
        total = task + self.flsa_weight * flsa_loss if self.flsa_weight > 0 else task
        if self.check_finite:
            for name, value in (("task loss", task), ("FLSA loss", flsa_loss)):
                if not torch.isfinite(value.detach()).all():
                    raise FloatingPointError(
                        f"ELTAWrapper: the {name} is {value.detach().float().item()} "
                        "(check the learning rate, the labels and the model's output)"
                    )
        return ELTAOutput(predictions, step.labels, total, task, flsa_loss, step.pairs, step.features)
