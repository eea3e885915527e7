"""The names of the established methods that ``elta_core.adapters.torch.peers`` implements,
spelled here once and importable without torch (the command line lists them in its
help): each peer class takes its ``name`` from this tuple."""

PEER_NAMES: tuple[str, ...] = ("lds", "fds", "ranksim", "cmixup", "bmse")
