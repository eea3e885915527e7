"""The methods ``elta compare`` and ``elta demo`` train: each a name and the settings of
:class:`~elta_core.app.config.TrainConfig` it fixes. One table for both; the peers'
names come from :data:`elta_core.peer_names.PEER_NAMES`."""

from __future__ import annotations

from typing import Any, Sequence

from elta_core.app.config import ROUND2_ONLY
from elta_core.peer_names import PEER_NAMES

# FLSA on at the recipe's weight (None: elta train's recipe fills it), or off (0).
FLSA_ON, FLSA_OFF = None, 0.0
_ELTA = {"tfa": True, "flsa": FLSA_ON}
METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"tfa": False, "flsa": FLSA_OFF},
    "tfa": {"tfa": True, "flsa": FLSA_OFF},
    "flsa": {"tfa": False, "flsa": FLSA_ON},
    "elta": dict(_ELTA),
    "elta+apds": {**_ELTA, "apds": True},
    # APDS ablations: the authors' unsharpened pseudo-labels; no sharpening at all (beta 0:
    # a confidence threshold on the plain softmax, grid-searched the same way); every pool
    # image, no selection and no cap; and the control: the same round 2 with no pseudo-label kept.
    "elta+apds-prediction": {**_ELTA, "apds": True, "pseudo_label": "prediction"},
    "elta+apds-unsharpened": {**_ELTA, "apds": True, "betas": (0.0,)},
    "elta+apds-whole-pool": {**_ELTA, "apds": True, "thresholds": (1e-9,), "max_pseudo_labels": "none"},
    "elta+round2-control": {**_ELTA, "apds": True, "max_pseudo_labels": 0},
    # The established methods, each alone (elta_core.adapters.torch.peers).
    **{name: {"tfa": False, "flsa": FLSA_OFF, "peers": (name,)} for name in PEER_NAMES},
}
DEFAULT_METHODS = ("baseline", "tfa", "flsa", "elta")
# What the methods set, and what compare sets per run: not to be given in the shared arguments.
SET_PER_RUN = tuple(sorted({key for settings in METHODS.values() for key in settings}
                          | {"seed", "out", "resume", "round1_from"}))


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods: expected a comma-separated list of {', '.join(METHODS)}, got {text!r}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods: {text!r} names a method twice")
    return methods


def uses_self_training(method: str) -> bool:
    return bool(METHODS[method].get("apds"))


def round1_donor(method: str, methods: Sequence[str]) -> str | None:
    """The method of ``methods`` (those before ``method``, where it is listed) whose run
    trains ``method``'s round 1 (the same settings but for APDS's own), a run without APDS
    first: ``elta`` for ``elta+apds``. None for a method without APDS, or where there is
    no such method."""
    if not uses_self_training(method):
        return None
    listed = list(methods)
    round1 = lambda name: {k: v for k, v in METHODS[name].items() if k not in ROUND2_ONLY}  # noqa: E731
    before = listed[:listed.index(method)] if method in listed else listed
    same = [m for m in before if round1(m) == round1(method)]
    return min(same, key=uses_self_training, default=None)  # stable: the first plain one, else the first
