"""The settings of ``elta train`` reach the objects they configure, and each constant and
each check of the application is written once."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from collections import defaultdict
from pathlib import Path

import pytest

from elta_core.app import config, options

PACKAGE = Path(__file__).resolve().parent.parent / "elta_core"


def _constructor(target: str):
    module, _, name = options.CONFIGURED[target].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _reaching_fields() -> list[tuple[str, str, str]]:
    return [(f.name, *reached.split(".")) for f in options.options_of(config.TrainConfig)
            for reached in f.metadata["reaches"]]


def test_every_setting_that_reaches_a_constructor_names_one_of_its_parameters():
    pytest.importorskip("torch")
    fields = _reaching_fields()
    assert {target for _, target, _ in fields} == set(options.CONFIGURED)
    for name, target, parameter in fields:
        assert parameter in inspect.signature(_constructor(target)).parameters, (name, target, parameter)


# A value for each field that reaches a constructor, none of them its default.
DISTINCT = {"tfa": False, "num_pairs": 3, "flsa": 0.7, "lr_schedule": "constant", "batch_size": 6, "betas": (1.0, 1.3),
            "thresholds": (0.2, 0.4), "min_selected": 3, "pseudo_label": "prediction", "round2": "separate",
            "round2_epochs": 2, "precision": "bf16"}


def test_each_setting_reaches_the_object_it_configures(tmp_path, monkeypatch):
    """``elta train`` builds its ``ELTAWrapper`` and its ``SelfTraining`` with each field's
    value: a field marked ``reaches`` arrives as that argument, unchanged."""
    pytest.importorskip("torchvision")
    from elta_core.adapters.torch import ELTAWrapper, SelfTraining
    from elta_core.app.run import pipeline, round2
    from elta_core.data.synthetic import export, generate

    assert {name for name, _, _ in _reaching_fields()} == set(DISTINCT)
    export(generate(40, 16, seed=3), tmp_path / "data")
    received = {}

    class Reached(Exception):
        pass

    def recording(target, cls):
        def build(*args, **kwargs):
            received[target] = kwargs
            if target == "self_training":
                raise Reached
            return cls(*args, **kwargs)
        return build

    monkeypatch.setattr(pipeline, "ELTAWrapper", recording("step", ELTAWrapper))
    monkeypatch.setattr(round2, "SelfTraining", recording("self_training", SelfTraining))
    monkeypatch.setattr(pipeline, "train_round1", lambda *args: {"epoch": 1, "optimizer": {}, "history": []})
    data = tmp_path / "data"
    settings = config.TrainConfig(labels=str(data / "labels.csv"), format="ava", images=str(data / "images"),
                                  image_size=16, epochs=1, workers=0, threads=1, quiet=True, out=str(tmp_path / "run"),
                                  val_fraction=0.25, apds=True, unlabelled=str(data / "images"),
                                  calibration=str(data / "labels.csv"),
                                  **DISTINCT)
    with pytest.raises(Reached):
        pipeline.train(settings)
    for name, target, parameter in _reaching_fields():
        assert received[target][parameter] == getattr(settings, name), (name, target, parameter)


def test_the_settings_only_the_apds_round_reads_are_marked_on_their_fields():
    assert set(config.ROUND2_ONLY) == {f.name for f in options.options_of(config.TrainConfig)
                                       if f.metadata["round2_only"]}
    assert "round2_resume_optimizer" not in config.ROUND2_ONLY  # it changes what round 1 keeps (best.pt)
    assert {"apds", "betas", "round2_epochs", "unlabelled"} <= set(config.ROUND2_ONLY)


def _module_constants(path: Path) -> dict[str, str]:
    constants = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id.isupper() and node.value is not None:
                try:
                    constants[target.id] = repr(ast.literal_eval(node.value))
                except ValueError:
                    pass
    return constants


# A kernel module imports nothing of the core above it (tests/test_layers.py): its copy of a
# core constant is tested equal to the core's instead (tests/test_triton.py).
KERNEL_COPIES = {"NORM_FLOOR": ["flsa.py", "kernels/triton_ops/flsa.py"]}


def test_each_constant_is_written_once():
    """No module-level constant is spelled out in two modules: the second imports the first."""
    written = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _module_constants(path):
            written[name].append(str(path.relative_to(PACKAGE)))
    assert {name: where for name, where in written.items() if len(where) > 1} == KERNEL_COPIES


def _messages(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            first = node.exc.args[0]
            if isinstance(first, ast.JoinedStr):
                text = "".join(part.value for part in first.values if isinstance(part, ast.Constant))
            elif isinstance(first, ast.Constant) and isinstance(first.value, str):
                text = first.value
            else:
                continue
            if len(text) > 25:
                found.append((text, node.lineno))
    return found


def test_each_check_of_the_application_is_written_once():
    """A refusal is raised in one place: two raises of the same message are one check written
    twice (as --apds without --unlabelled and --val-fraction were)."""
    raised = defaultdict(list)
    for path in sorted((PACKAGE / "app").rglob("*.py")):
        for text, line in _messages(path):
            raised[text].append(f"{path.relative_to(PACKAGE)}:{line}")
    assert {text: where for text, where in raised.items() if len(where) > 1} == {}


def test_the_optimizers_and_schedules_offered_are_the_ones_that_run():
    torch = pytest.importorskip("torch")
    from elta_core.adapters.torch import loop
    from elta_core.app.run.model import optimizer_class

    assert dataclasses.fields(config.TrainConfig)  # the module defines the commands
    for name in config.OPTIMIZERS:
        assert issubclass(optimizer_class(name), torch.optim.Optimizer)
    assert loop.PRECISIONS is config.PRECISIONS
