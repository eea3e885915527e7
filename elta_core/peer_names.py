"""The registry of the established methods (``elta_core.adapters.torch.peers``): each
name and where its class lives, importable without torch (the command line lists the
names in its help). Adding a peer is writing its class, one file of that package, and
adding its line here; ``--peers``, ``elta compare``'s methods, the demo and the
benchmark read the names from this table."""

from __future__ import annotations

import importlib

PEER_CLASSES: dict[str, str] = {
    "lds": "elta_core.adapters.torch.peers.lds:LDS",
    "fds": "elta_core.adapters.torch.peers.fds:FDS",
    "ranksim": "elta_core.adapters.torch.peers.ranksim:RankSim",
    "cmixup": "elta_core.adapters.torch.peers.cmixup:CMixup",
    "bmse": "elta_core.adapters.torch.peers.bmse:BalancedMSE",
}
PEER_NAMES: tuple[str, ...] = tuple(PEER_CLASSES)


def peer_class(name: str) -> type:
    """The class registered as ``name`` (imported on first use), which takes the name."""
    if name not in PEER_CLASSES:
        raise ValueError(f"peers: expected one of {', '.join(PEER_NAMES)}, got {name!r}")
    module, _, attribute = PEER_CLASSES[name].partition(":")
    kind = getattr(importlib.import_module(module), attribute)
    kind.name = name
    return kind
