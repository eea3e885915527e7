"""``elta export``: a checkpoint to a model that loads without elta_core: the weights as
safetensors, ``elta_model.json`` (the backbone's timm or torchvision name, the head, the
rating scale and the evaluation transform) and ``load_elta_model.py``, a loader that needs
only torch, torchvision, safetensors and Pillow (and timm for a timm backbone);
optionally a ``torch.export`` program (``model.pt2``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from elta_core.app.config import ExportConfig
from elta_core.app.models import BUILTIN_PREFIX, EMD_MLP_HIDDEN, SIGMOID_DROPOUT, classifier_of, create_backbone
from elta_core.app.run.model import RunConfig, load_checkpoint
from elta_core.app.run.resources import output_folder
from elta_core.io import atomic_write, atomic_write_json

FORMAT = "elta-export/1"
LOADER = Path(__file__).with_name("export_files") / "load_elta_model.py"


def transform_steps(transform: Any) -> list[dict[str, Any]]:
    """The evaluation transform (a torchvision ``Compose``) as JSON steps the loader rebuilds."""
    steps = []
    for step in transform.transforms:
        name = type(step).__name__
        if name == "Resize":
            steps.append({"name": name, "size": list(step.size), "interpolation": step.interpolation.value,
                          "antialias": step.antialias})
        elif name == "CenterCrop":
            steps.append({"name": name, "size": list(step.size)})
        elif name == "ToTensor":
            steps.append({"name": name})
        elif name == "Normalize":
            steps.append({"name": name, "mean": list(step.mean), "std": list(step.std)})
        else:
            raise ValueError(f"checkpoint: its evaluation transform has a {name} step, which export does not describe")
    return steps


def description(config: RunConfig) -> dict[str, Any]:
    """``elta_model.json``: what the loader needs to rebuild the model and its preprocessing."""
    _, replaced, in_features = classifier_of(create_backbone(config.backbone, config.num_bins))
    head: dict[str, Any] = {"type": config.head_type, "module": replaced, "in_features": in_features,
                            "num_bins": config.num_bins}
    if config.head_type == "emd-mlp":
        head["hidden"] = EMD_MLP_HIDDEN
    if config.head_type == "sigmoid":
        head.update(dropout=SIGMOID_DROPOUT, top=config.scale[1])
    return {"format": FORMAT, "backbone": config.backbone, "num_bins": config.num_bins,
            "bin_values": list(config.bin_values), "scale": list(config.scale), "head": head,
            "output": "score" if config.head_type == "sigmoid" else "logits over the rating levels",
            "transform": transform_steps(config.transform(False))}


def export(settings: ExportConfig) -> dict[str, str]:
    """Write the export of ``settings.checkpoint`` to ``settings.out``; returns the paths."""
    from safetensors.torch import save

    wrapper, config = load_checkpoint(settings.checkpoint, torch.device("cpu"))
    if config.backbone.startswith(BUILTIN_PREFIX):
        raise ValueError(f"checkpoint: its backbone {config.backbone} is elta_core's own, which the exported loader "
                         "(torch, torchvision and timm only) cannot build; load the checkpoint with "
                         "elta_core.app.predict.load_model instead")
    out = output_folder(settings.out)
    model = wrapper.model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    paths = {"weights": atomic_write(out / "model.safetensors", lambda stream: stream.write(save(state))),
             "description": atomic_write_json(out / "elta_model.json", description(config)),
             "loader": atomic_write(out / LOADER.name, lambda stream: stream.write(LOADER.read_bytes()))}
    if settings.torch_export:
        example = torch.zeros(2, 3, config.image_size, config.image_size)  # 2: a batch of 1 would be fixed
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        paths["torch_export"] = atomic_write(out / "model.pt2", lambda stream: torch.export.save(program, stream))
    return {name: str(path) for name, path in paths.items()}
