"""The methods ``elta compare`` and ``elta demo`` train: each a name and the settings of
:class:`~elta_core.app.config.TrainConfig` it fixes. One table for both; the peers'
names come from :data:`elta_core.peer_names.PEER_NAMES`. Beside it, each method's search
space for ``elta compare --tune`` (:data:`SEARCH_SPACES`)."""

from __future__ import annotations

from dataclasses import dataclass
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


def _round1_settings(method: str) -> dict[str, Any]:
    """What ``method`` sets that round 1 reads: two methods equal in it train the same round 1."""
    return {k: v for k, v in METHODS[method].items() if k not in ROUND2_ONLY}


def round1_donor(method: str, methods: Sequence[str]) -> str | None:
    """The method of ``methods`` (those before ``method``, where it is listed) whose run
    trains ``method``'s round 1 (the same settings but for APDS's own), a run without APDS
    first: ``elta`` for ``elta+apds``. None for a method without APDS, or where there is
    no such method."""
    if not uses_self_training(method):
        return None
    listed = list(methods)
    before = listed[:listed.index(method)] if method in listed else listed
    same = [m for m in before if _round1_settings(m) == _round1_settings(method)]
    return min(same, key=uses_self_training, default=None)  # stable: the first plain one, else the first


@dataclass(frozen=True)
class OnScale:
    """A search-space value in points of a 1..10 rating scale: the run's value is
    ``points`` times the data's ``score_scale`` (a C-Mixup bandwidth or a Balanced MSE
    noise scale means the same on AVA's 1..10 as on a 1..5 scale)."""

    points: float


# elta compare --tune: each method's main settings, as points in the order they are tried
# (the default first; a budget of N trials takes the first N). A key is a TrainConfig field
# or PEER.SETTING, a keyword argument of the peer's class (--peer-settings). A method that
# is not here has nothing to tune (the baseline); an APDS method takes the choice of the
# method that trains its round 1 (tuned_as), and grid-searches its own (beta, t) anyway.
_KERNEL_WIDTHS = ((5, 2.0), (3, 1.0), (9, 3.0), (15, 5.0))  # (taps, sigma) in bins: DIR's default first
SEARCH_SPACES: dict[str, list[dict[str, Any]]] = {
    "tfa": [{"num_pairs": n} for n in (1, 0.25, 0.125, 0.5)],
    "flsa": [{"flsa": w} for w in (0.3, 1.0, 0.1, 3.0)],
    "elta": [{"flsa": w, "num_pairs": n} for n, w in ((1, 0.3), (1, 1.0), (1, 0.1), (0.25, 0.3), (0.25, 1.0),
                                                        (0.25, 0.1))],
    "lds": [{"lds.kernel_size": k, "lds.sigma": s} for k, s in _KERNEL_WIDTHS],
    "fds": [{"fds.kernel_size": k, "fds.sigma": s} for k, s in _KERNEL_WIDTHS],
    "ranksim": [{"ranksim.weight": w} for w in (100.0, 1.0, 0.1, 0.01, 10.0)],
    "cmixup": [{"cmixup.bandwidth": OnScale(b)} for b in (0.5, 0.25, 1.0, 2.0)],
    "bmse": [{"bmse.init_sigma": OnScale(s)} for s in (1.0, 0.5, 2.0, 0.25)],
}

def tuned_as(method: str) -> str:
    """The method whose tuning ``method`` takes: itself, or for an APDS method the method
    without APDS that trains the same round 1 (``elta`` for ``elta+apds``)."""
    if not uses_self_training(method):
        return method
    return next(m for m in METHODS if not uses_self_training(m) and _round1_settings(m) == _round1_settings(method))


def search_points(method: str, budget: int, score_scale: float) -> list[dict[str, Any]]:
    """The first ``budget`` points of ``method``'s search space, with :class:`OnScale`
    values on the data's scale; empty where it has nothing to tune."""
    return [{k: round(v.points * score_scale, 12) if isinstance(v, OnScale) else v for k, v in point.items()}
            for point in SEARCH_SPACES.get(method, [])[:budget]]


def point_label(point: dict[str, Any]) -> str:
    """A point as ``key=value,...`` (also the name of its trials' folder); ``default``
    for the empty point."""
    return ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in point.items()) or "default"


def search_space_help() -> str:
    """The search spaces, one line a method, for ``elta compare --help``."""
    def value(v: Any) -> str:
        return f"{v.points:g}" if isinstance(v, OnScale) else f"{v:g}"

    lines = []
    for method, points in SEARCH_SPACES.items():
        keys = list(points[0])
        shown = [value(p[keys[0]]) if len(keys) == 1 else "(" + ", ".join(value(p[k]) for k in keys) + ")"
                 for p in points]
        on_scale = " (points of a 1..10 scale)" if isinstance(points[0][keys[0]], OnScale) else ""
        lines.append(f"  {method}: {keys[0] if len(keys) == 1 else '(' + ', '.join(keys) + ')'} in "
                     f"{', '.join(shown)}{on_scale}")
    return "\n".join(lines)
