"""Settings as dataclass fields that are also command-line options.

Each field is one option: its default, its help, its choices and how it is parsed are
the field's (:func:`option`), and so are its place in a run's identity (``identity=False``
for the settings that do not change a result; ``on_resume="may_change"`` for those a
resumed run may change), the constructor arguments it reaches unchanged (``reaches``,
read by :func:`arguments_for`) and whether only the APDS round reads it
(``round2_only``). :func:`add_options` builds the argparse options and
:func:`from_namespace` the config. Nothing here imports a framework, so ``elta --help``
stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import field
from typing import Any, Callable, Sequence

from elta_core.peer_names import PEER_NAMES

# -- parsing of option values ------------------------------------------------------------


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def max_pseudo_labels(text: str) -> str | int:
    if text in ("labelled", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected labelled, none or an int >= 0, got {text!r}")
    return value


def thresholds(text: str) -> str | tuple[float, ...]:
    return text if text in ("auto", "paper", "quantiles") else floats(text)


def peer_list(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEER_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(PEER_NAMES)}, "
                                         f"got {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a method twice")
    return tuple(names)


def peer_settings(text: str) -> tuple[str, ...]:
    """``PEER.SETTING=VALUE,...`` as entries ``PEER.SETTING=VALUE``, a number written as
    Python writes the float (so ``1`` and ``1.0`` are one setting of a run's identity)."""
    import math

    entries: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, _, value = item.partition("=")
        peer, _, name = key.partition(".")
        if peer not in PEER_NAMES or not name.isidentifier() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected PEER.SETTING=VALUE with PEER one of {', '.join(PEER_NAMES)} "
                                             f"(comma-separated), got {item!r}")
        try:
            number = float(value)
        except ValueError:
            entries[key] = f"{key}={value.strip()}"
            continue
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"expected a finite number for {key}, got {value!r}")
        if key in entries:
            raise argparse.ArgumentTypeError(f"{key} is given twice in {text!r}")
        entries[key] = f"{key}={number!r}"
    return tuple(entries.values())


def peer_setting_values(entries: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`peer_settings`' entries by peer: ``{"ranksim": {"weight": 1.0}}`` (a value
    that is not a number stays text)."""
    values: dict[str, dict[str, Any]] = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        peer, _, name = key.partition(".")
        try:
            values.setdefault(peer, {})[name] = float(value)
        except ValueError:
            values.setdefault(peer, {})[name] = value
    return values


def check_number(value: Any, flag: str, expected: str, ok: Callable[[float], bool]) -> None:
    """Refuse a NaN, an infinity or a value outside ``ok``, naming the option, before
    anything is trained or recorded (a NaN would otherwise surface as an unwritable
    manifest.json, an infinity as a bare OverflowError)."""
    import math

    numbers = value if isinstance(value, (tuple, list)) else [value]
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or \
                not ok(number):
            raise ValueError(f"{flag}: expected {expected}, got {value if len(numbers) > 1 else number!r}")


# -- fields as options -------------------------------------------------------------------


def option(default: Any = None, help: str = "", *, flag: str | None = None, type: Callable | None = None,
           choices: Sequence[str] | None = None, action: str | None = None, metavar: str | None = None,
           required: bool = False, positional: bool = False, hidden: bool = False, identity: bool = True,
           on_resume: str = "fixed", reaches: Sequence[str] = (), round2_only: bool = False, bare: Any = None) -> Any:
    """A dataclass field that is also a command-line option. ``action``: ``"store_true"``
    or ``"boolean"`` (``--x`` / ``--no-x``); ``identity=False``: the setting does not
    change a run's result; ``on_resume="may_change"``: ``--resume`` may change it;
    ``reaches``: the ``"object.parameter"`` arguments it is passed as, unchanged
    (:func:`arguments_for`; objects: :data:`CONFIGURED`); ``round2_only``: only the APDS
    round reads it (:data:`ROUND2_ONLY`); ``bare``: the value of the flag given without one
    (``--pretrained`` alone: ``"default"``)."""
    metadata = {"help": help, "flag": flag, "type": type, "choices": choices, "action": action, "metavar": metavar,
                "required": required, "positional": positional, "hidden": hidden, "identity": identity,
                "on_resume": on_resume, "reaches": tuple(reaches), "round2_only": round2_only, "bare": bare}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def options_of(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """The argparse options of ``cls``'s fields, in field order."""
    for f in options_of(cls):
        meta = f.metadata
        help_text = argparse.SUPPRESS if meta["hidden"] else meta["help"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if meta["positional"]:
            parser.add_argument(f.name, help=help_text, type=meta["type"] or str)
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": default}
        if meta["action"] == "store_true":
            kwargs["action"] = "store_true"
        elif meta["action"] == "boolean":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta["action"] == "remainder":
            parser.add_argument(f.name, nargs=argparse.REMAINDER, help=help_text)
            continue
        else:
            if meta["type"] is not None:
                kwargs["type"] = meta["type"]
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
            if meta["required"]:
                kwargs["required"] = True
            if meta["bare"] is not None:
                kwargs.update(nargs="?", const=meta["bare"])
        parser.add_argument(flag, **kwargs)


def from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    """The config of ``cls`` from a parsed command line."""
    return cls(**{f.name: getattr(namespace, f.name) for f in options_of(cls)})


def flags_of(cls: type, names: Sequence[str]) -> dict[str, list[str]]:
    """The command-line spellings of the fields ``names`` of ``cls``."""
    spelled: dict[str, list[str]] = {}
    for f in options_of(cls):
        if f.name in names:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            spelled[f.name] = [flag] + (["--no-" + flag[2:]] if f.metadata["action"] == "boolean" else [])
    return spelled


def run_identity(config: Any, **extra: Any) -> dict[str, Any]:
    """The settings that decide whether a run directory may be reused: every field marked
    part of the identity, as JSON values, plus ``extra`` (e.g. the world size)."""
    import json

    values = {f.name: getattr(config, f.name) for f in options_of(type(config)) if f.metadata["identity"]}
    return json.loads(json.dumps(dict(sorted({**values, **extra}.items()))))


def may_change_on_resume(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in options_of(cls) if f.metadata["on_resume"] == "may_change")


# The objects a run builds from its settings, by the name a field's ``reaches`` gives them:
# the training step's settings (ELTAWrapper(**options) passes them on) and the APDS round.
CONFIGURED = {"step": "elta_core.step.ELTAConfig", "self_training": "elta_core.adapters.torch.SelfTraining"}


def arguments_for(config: Any, target: str) -> dict[str, Any]:
    """The keyword arguments of ``target`` (a key of :data:`CONFIGURED`) that ``config``'s
    fields set as they are: every field whose ``reaches`` names ``target.parameter``."""
    if target not in CONFIGURED:
        raise ValueError(f"target: expected one of {', '.join(CONFIGURED)}, got {target!r}")
    arguments = {}
    for f in options_of(type(config)):
        for reached in f.metadata["reaches"]:
            owner, _, parameter = reached.partition(".")
            if owner == target:
                arguments[parameter] = getattr(config, f.name)
    return arguments


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (where there is one); descriptions and examples kept
    as written."""

    def _get_help_string(self, action):
        # "is": a default of 0 (--seed) is a default worth showing, False and None are not
        if action.default is None or action.default is False or action.default in ((), []) or action.required:
            return action.help
        return super()._get_help_string(action)


def settings_parser(cls: type, prog: str) -> argparse.ArgumentParser:
    """A parser for one command's settings alone (``elta compare`` parses the shared train
    arguments with it)."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter)
    add_options(parser, cls)
    return parser
