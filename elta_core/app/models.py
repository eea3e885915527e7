"""The models ``elta train`` builds: a torchvision, timm or built-in backbone with one of three heads,
and weights from a local file (``.pth`` / ``.pt`` or ``.safetensors``) or the backbone's
published ones (``--pretrained``: timm's hub, torchvision's weights enums, each cached)."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from elta_core.adapters.torch.modules import auto_head, find_module, last_linear, replace_module
from elta_core.app.config import HEADS
from elta_core.optional import require

EMD_MLP_HIDDEN = 64  # the authors' EMD head: Linear(F, 64), ReLU, Linear(64, C)
SIGMOID_DROPOUT = 0.75  # the authors' score head: Dropout(0.75), Linear(F, 1), Sigmoid
TIMM_PREFIX = "timm/"
BUILTIN_PREFIX = "elta/"


class SmallCNN(nn.Module):
    """``elta/small-cnn``, the demo's model: four strided convolutions, global pooling, and a
    linear classifier over the rating levels (``head``)."""

    def __init__(self, width: int = 32, num_bins: int = 10):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, width, 1), block(width, width, 2), block(width, 2 * width, 2), block(2 * width, 2 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_bins)

    def forward(self, x):
        return self.head(self.features(x))


BUILTIN_BACKBONES = {"small-cnn": SmallCNN}  # elta/<name>: models of this library, with no published weights


class ScaledSigmoid(nn.Module):
    """``top * sigmoid(x)``: a score in (0, top). With ``top`` the rating scale's upper end
    this is the authors' sigmoid head trained on labels divided by 10 (on a 1..10 scale),
    with predictions and metrics kept on the labels' own scale."""

    def __init__(self, top: float):
        super().__init__()
        self.top = float(top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top * torch.sigmoid(x)

    def extra_repr(self) -> str:
        return f"top={self.top:g}"


def make_head(kind: str, in_features: int, num_bins: int, top: float) -> nn.Module:
    """``linear``: Linear(F, C) logits over the C rating levels; ``emd-mlp``: the authors' EMD
    head, Linear(F, 64), ReLU, Linear(64, C); ``sigmoid``: the authors' head for score
    datasets, Dropout(0.75), Linear(F, 1), then ``top * sigmoid`` (one score per image)."""
    if kind == "linear":
        return nn.Linear(in_features, num_bins)
    if kind == "emd-mlp":
        return nn.Sequential(nn.Linear(in_features, EMD_MLP_HIDDEN), nn.ReLU(), nn.Linear(EMD_MLP_HIDDEN, num_bins))
    if kind == "sigmoid":
        return nn.Sequential(nn.Dropout(SIGMOID_DROPOUT), nn.Linear(in_features, 1), ScaledSigmoid(top))
    raise ValueError(f"head: expected one of {', '.join(HEADS)}, got {kind!r}")


def create_backbone(backbone: str, num_bins: int, pretrained: str | None = None) -> nn.Module:
    """``timm/<name>`` (any timm model, ``timm/<name>.<tag>`` naming its weights) or a
    torchvision model name, randomly initialised with a ``num_bins``-way classifier, or
    with ``pretrained`` ("default", or a timm tag or torchvision weights name) from its
    published weights (:func:`pretrained_timm`, :func:`pretrained_torchvision`); or
    ``elta/<name>``, a model of this library (:data:`BUILTIN_BACKBONES`)."""
    if backbone.startswith(BUILTIN_PREFIX):
        name = backbone[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_BACKBONES:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_BACKBONES)
            raise ValueError(f"backbone: elta_core has no model {backbone!r} (its own: {known})")
        if pretrained:
            raise ValueError(f"pretrained: {backbone} has no published weights; train it from scratch or give "
                             "--weights")
        return BUILTIN_BACKBONES[name](num_bins=num_bins)
    if backbone.startswith(TIMM_PREFIX):
        timm = require("timm", "timm")
        name = backbone[len(TIMM_PREFIX):]
        architecture = name.split(".", 1)[0]
        if architecture not in timm.list_models():
            nearest = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.5)
            hint = f"; nearest: {', '.join(nearest)}" if nearest else ""
            raise ValueError(f"backbone: timm has no model {architecture!r}{hint}")
        if pretrained:
            return pretrained_timm(name, pretrained, num_bins)
        return timm.create_model(name, pretrained=False, num_classes=num_bins)
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(backbone)
    except ValueError:
        names = sorted(torchvision.models.list_models(module=torchvision.models))
        nearest = difflib.get_close_matches(backbone, names, n=5, cutoff=0.5) or names[:8]
        raise ValueError(f"backbone: unknown torchvision model {backbone!r} (e.g. {', '.join(nearest)}; "
                         "timm models as timm/<name>)") from None
    if pretrained:
        return pretrained_torchvision(backbone, pretrained)
    return builder(weights=None, num_classes=num_bins)


def pretrained_timm(name: str, tag: str, num_bins: int) -> nn.Module:
    """timm's ``create_model(pretrained=True)``: the weights come from the Hugging Face hub's
    cache (``HF_HOME``), downloaded once with a progress bar unless ``HF_HUB_OFFLINE`` is
    set; ``tag`` "default" keeps the tag of ``name`` (or timm's default one)."""
    import timm
    from huggingface_hub import constants

    architecture = name.split(".", 1)[0]
    tagged = name if tag == "default" else f"{architecture}.{tag}"
    available = timm.list_pretrained(f"{architecture}.*")
    if not available or ("." in tagged and tagged not in available):
        tags = ", ".join(t.split(".", 1)[1] for t in available) or "none"
        raise ValueError(f"pretrained: timm has no published weights {tagged!r} (tags of {architecture}: {tags})")
    try:
        return timm.create_model(tagged, pretrained=True, num_classes=num_bins)
    except Exception as error:  # noqa: BLE001 - the hub's errors (offline, no network, not found) differ
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise ValueError(f"pretrained: the weights of timm/{tagged} are not in the cache {constants.HF_HUB_CACHE} "
                         f"and could not be downloaded{offline}: {type(error).__name__}; download them once with a "
                         "network, or give the file with --weights") from None


def pretrained_torchvision(backbone: str, tag: str) -> nn.Module:
    """``backbone`` with the torchvision weights ``tag`` names ("default": its DEFAULT), from
    torch's hub cache (``TORCH_HOME``), downloaded once with a progress bar; with
    ``HF_HUB_OFFLINE`` set (this library's offline switch), only from the cache."""
    import os

    import torchvision

    enum = torchvision.models.get_model_weights(backbone)
    try:
        weights = enum.DEFAULT if tag == "default" else enum[tag]
    except KeyError:
        raise ValueError(f"pretrained: {backbone} has no weights {tag!r} (torchvision's: "
                         f"{', '.join(w.name for w in enum)})") from None
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = (cache / os.path.basename(weights.url)).is_file()
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not cached and offline:
        raise ValueError(f"pretrained: the weights {backbone}:{weights.name} are not in the cache {cache} "
                         "(HF_HUB_OFFLINE is set); download them once with a network, or give the file with --weights")
    try:
        return torchvision.models.get_model(backbone, weights=weights)
    except Exception as error:  # noqa: BLE001 - urllib's and torch.hub's errors differ
        raise ValueError(f"pretrained: the weights {backbone}:{weights.name} are not in the cache {cache} and "
                         f"could not be downloaded: {type(error).__name__}; download them once with a network, or "
                         "give the file with --weights") from None


def build_model(backbone: str, num_bins: int, head: str = "linear", weights: str | None = None,
                top: float = 10.0, pretrained: str | None = None) -> tuple[nn.Module, str, list[str]]:
    """The backbone with a ``head`` (see :func:`make_head`) in place of its classifier's last
    ``nn.Linear``, and ``weights`` loaded from a local file or its ``pretrained`` weights
    (:func:`create_backbone`). Returns the model, the name of its head module (where TFA
    mixes) and the head tensors left at their initial values."""
    check_weights_source(weights, pretrained)
    model = create_backbone(backbone, num_bins, pretrained)
    head_name, replaced, in_features = classifier_of(model)
    replace_module(model, replaced, make_head(head, in_features, num_bins, top))
    if weights:
        skipped = load_weights(model, weights, head_name)
    else:  # from scratch every tensor is new; from --pretrained the head's are
        in_head = [k for k in model.state_dict() if k == head_name or k.startswith(head_name + ".")]
        skipped = sorted(in_head) if pretrained else []
    return model, head_name, skipped


def check_weights_source(weights: str | None, pretrained: str | None) -> None:
    """One source of starting weights: a file or the published ones."""
    if weights and pretrained:
        raise ValueError("pretrained: give --pretrained or --weights, not both")


def classifier_of(model: nn.Module) -> tuple[str, str, int]:
    """Where a backbone's classifier is: the head module's name (where TFA mixes), the name
    of its last ``nn.Linear`` (which :func:`build_model` replaces by the IAA head) and that
    layer's input features."""
    head_name = auto_head(model)
    head_module = find_module(model, head_name, "head")
    inner, linear = ("", head_module) if isinstance(head_module, nn.Linear) else last_linear(head_module)
    return head_name, f"{head_name}.{inner}" if inner else head_name, linear.in_features


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``.pth``/``.pt`` state dict (also inside
    ``{"model": ...}`` or ``{"state_dict": ...}``; a DDP ``module.`` prefix is dropped)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"weights: no such file: {path}")
    if file.suffix == ".safetensors":
        safetensors_torch = require("safetensors.torch", "timm")
        try:
            return safetensors_torch.load_file(str(file), device="cpu")
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"weights: {path} cannot be read as safetensors ({type(error).__name__}); "
                             "is it damaged?") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"weights: {path} cannot be read as a state dict ({type(error).__name__}); give a "
                         ".pth file of tensors or a .safetensors file") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights: {path} holds a {type(state).__name__} that is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_classifier_of_source(key: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``key`` is the source model's own head (an ImageNet ``fc``/``classifier``/
    ``head``), which a new head replaces: the last weight-and-bias pair of the file."""
    names = [k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")]
    return bool(names) and key.rsplit(".", 1)[0] == names[-1]


def load_weights(model: nn.Module, path: str, head_name: str) -> list[str]:
    """Load every backbone tensor from ``path`` (the head may differ: an ImageNet head is
    skipped). A backbone tensor that is missing or of another shape is an error naming
    it: such a file belongs to another architecture. Returns the head tensors not loaded."""
    state = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    in_head = lambda key: key == head_name or key.startswith(head_name + ".")  # noqa: E731
    wrong = sorted(k for k in own if k not in usable and not in_head(k))
    if wrong:
        example = wrong[0]
        found = f"shape {tuple(state[example].shape)} in the file, {tuple(own[example].shape)} in the model" \
            if example in state else "missing from the file"
        raise ValueError(f"weights: {path} does not fit this backbone: {len(wrong)} of its {len(own)} tensors do not "
                         f"match, e.g. {example} ({found}); are they the weights of another model?")
    # tensors of the file that this backbone has no place for: another (larger) architecture
    unexpected = sorted(k for k in state if k not in own and not in_head(k) and not _is_classifier_of_source(k, state))
    if unexpected:
        raise ValueError(f"weights: {path} has {len(unexpected)} tensor(s) this backbone does not have, e.g. "
                         f"{unexpected[0]}; are they the weights of another model?")
    for key, value in usable.items():
        expected = own[key]
        if expected.is_floating_point() and not value.is_floating_point():
            raise ValueError(f"weights: {path}: {key} is {value.dtype} in the file, a float in the model; the file "
                             "is not this model's weights")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"weights: {path}: {key} holds NaN or Inf values; the file is damaged")
    model.load_state_dict(usable, strict=False)
    return sorted(k for k in own if k not in usable)
