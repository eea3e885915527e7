"""Load an aesthetics model exported by ``elta export``, without elta_core.

Needs torch, torchvision, safetensors and Pillow (and timm for a timm backbone)::

    from load_elta_model import load, open_image
    model, transform, spec = load("exported/")
    distribution = model(transform(open_image("photo.jpg"))[None]).softmax(1)  # (1, C)
    score = distribution @ torch.tensor(spec["bin_values"])                  # on the rating scale

A sigmoid head (``spec["head"]["type"] == "sigmoid"``) predicts the score itself.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class ScaledSigmoid(nn.Module):
    def __init__(self, top):
        super().__init__()
        self.top = top

    def forward(self, x):
        return self.top * torch.sigmoid(x)


def _head(spec):
    features, levels = spec["in_features"], spec["num_bins"]
    if spec["type"] == "linear":
        return nn.Linear(features, levels)
    if spec["type"] == "emd-mlp":
        return nn.Sequential(nn.Linear(features, spec["hidden"]), nn.ReLU(), nn.Linear(spec["hidden"], levels))
    return nn.Sequential(nn.Dropout(spec["dropout"]), nn.Linear(features, 1), ScaledSigmoid(spec["top"]))


def _transform(steps):
    from torchvision import transforms

    made = []
    for step in steps:
        options = {k: v for k, v in step.items() if k != "name"}
        if "interpolation" in options:
            options["interpolation"] = transforms.InterpolationMode(options["interpolation"])
        made.append(getattr(transforms, step["name"])(**options))
    return transforms.Compose(made)


def open_image(path):
    """The image upright (as its EXIF orientation says) and in RGB, as the model was trained."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def load(folder, device="cpu"):
    """The model (eval mode), its preprocessing and the export's description."""
    folder = Path(folder)
    spec = json.loads((folder / "elta_model.json").read_text(encoding="utf-8"))
    if spec["backbone"].startswith("timm/"):
        import timm

        model = timm.create_model(spec["backbone"][len("timm/"):], pretrained=False, num_classes=spec["num_bins"])
    else:
        import torchvision

        model = torchvision.models.get_model(spec["backbone"], weights=None, num_classes=spec["num_bins"])
    parent, _, name = spec["head"]["module"].rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, _head(spec["head"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval(), _transform(spec["transform"]), spec
