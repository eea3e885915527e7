"""Finding and replacing submodules by name, with helpful errors; the model and seed an
adapter is given."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn


def module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def find_module(model: nn.Module, name: str, argument: str) -> nn.Module:
    """The submodule called ``name``; a ``ValueError`` that lists the nearest names if none."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = module_names(model)
    nearest = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    top_level = [child for child, _ in model.named_children()]
    hint = f"nearest names: {', '.join(nearest)}" if nearest else "no similar names"
    raise ValueError(
        f"{argument}: {type(model).__name__} has no submodule {name!r} ({hint}; "
        f"top-level modules: {', '.join(top_level) or 'none'})"
    )


def name_of(model: nn.Module, module: nn.Module, argument: str) -> str:
    for name, candidate in model.named_modules():
        if candidate is module and name:
            return name
    raise ValueError(f"{argument}: the given module is not a submodule of {type(model).__name__}")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = find_module(model, parent_name, "head") if parent_name else model
    setattr(parent, child, new)


def last_linear(module: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"head: expected an nn.Linear inside {type(module).__name__} to widen")
    return linears[-1]


def to_distribution_head(model: nn.Module, head: str, num_bins: int = 10) -> nn.Module:
    """Turn a scalar regression head into a ``num_bins``-way distribution head, in place.

    The last ``nn.Linear`` of the module ``head`` (its output width 1) is replaced by a
    fresh ``nn.Linear(in_features, num_bins)``; the model then outputs logits over the
    rating levels, which APDS needs. Use the matching ``bin_values`` (e.g. 1..10 for AVA,
    1.0, 1.5, ..., 5.0 for PARA) in ``ELTAWrapper``. Returns ``model``.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins: expected at least 2 rating levels, got {num_bins}")
    head_module = find_module(model, head, "head")
    if isinstance(head_module, nn.Linear):
        inner_name, linear = "", head_module
    else:
        inner_name, linear = last_linear(head_module)
    if linear.out_features != 1:
        raise ValueError(f"head: the last nn.Linear of {head!r} has {linear.out_features} outputs; "
                         "to_distribution_head widens a scalar (1-output) head. A head with C outputs is already "
                         "a distribution head: use it as it is")
    widened = nn.Linear(linear.in_features, num_bins, bias=linear.bias is not None)
    widened.to(device=linear.weight.device, dtype=linear.weight.dtype)
    replace_module(model, f"{head}.{inner_name}" if inner_name else head, widened)
    return model


def ends_in_softmax(module: nn.Module) -> bool:
    """Whether the last leaf module of ``module`` is a softmax (a NIMA-style head)."""
    leaves = [m for m in module.modules() if not list(m.children())]
    return bool(leaves) and isinstance(leaves[-1], nn.Softmax)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def as_float_labels(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    dtype = torch.float64 if labels.dtype == torch.float64 else torch.float32
    return labels.to(device=like.device, dtype=dtype)


class _BackboneHead(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


HEAD_NAMES = ("fc", "classifier", "heads", "head")  # torchvision, Hugging Face, timm


def _holds_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def auto_head(model: nn.Module) -> str:
    """The name of the model's head: timm's own (``pretrained_cfg["classifier"]`` or
    ``get_classifier()``), else the first of ``fc``, ``classifier``, ``heads``, ``head``
    (torchvision, Hugging Face image models) that holds an ``nn.Linear``. A ``ValueError``
    lists the candidates when none fits."""
    modules = dict(model.named_modules())
    config = getattr(model, "pretrained_cfg", None)
    name = config.get("classifier") if isinstance(config, dict) else None
    if isinstance(name, str) and name in modules and _holds_linear(modules[name]):
        return name
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, nn.Module) and _holds_linear(classifier):
            found = [n for n, m in model.named_modules() if m is classifier and n]
            if found:
                return found[0]
    for candidate in HEAD_NAMES:
        if candidate in dict(model.named_children()) and _holds_linear(modules[candidate]):
            return candidate
    candidates = [n for n, child in model.named_children() if _holds_linear(child)]
    raise ValueError(f"head: cannot tell the head of {type(model).__name__} (no {', '.join(HEAD_NAMES)} with an "
                     f"nn.Linear, no timm classifier); pass head= one of: {', '.join(candidates) or 'none found'}")


def model_and_head(model: nn.Module | None, head: str | nn.Module | None,
                   backbone: nn.Module | None) -> tuple[nn.Module, str]:
    """The model to hook and the name of its head, from a model with ``head`` or from
    ``backbone=`` and ``head=`` modules."""
    if model is None:
        if backbone is None or not isinstance(head, nn.Module):
            raise ValueError("model: expected a model with head=..., or backbone= and head= modules")
        return _BackboneHead(backbone, head), "head"
    if backbone is not None:
        raise ValueError("backbone: pass either a model with head=..., or backbone= and head=, not both")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if head is None:
        raise ValueError('head: expected the name of the head module (e.g. "fc"), "auto" or the module itself')
    if head == "auto":
        return model, auto_head(model)
    return model, (name_of(model, head, "head") if isinstance(head, nn.Module) else head)


def generator_of(seed: Any) -> torch.Generator | None:
    """A ``torch.Generator`` for an int seed; a generator or None as given."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(seed)
    if seed is not None and not isinstance(seed, torch.Generator):
        raise ValueError(f"seed: expected None, an int or a torch.Generator, got {type(seed).__name__}")
    return seed
