"""The established deep-imbalanced-regression methods, as plug-ins of :class:`ELTAWrapper`.

ELTA's paper compares against these; ``elta compare`` trains them beside ELTA on the
same data and seeds. Each is written from its paper's equations (not from the authors'
code) as a pure function, which the tests check against a float64 reference, and a
small ``nn.Module`` that the wrapper calls at one of five points of a training step:

====================  =======================================================  ===========
method                what it changes                                          hook
====================  =======================================================  ===========
:class:`LDS`          weights each sample's task loss by its smoothed rarity   ``sample_weights``
:class:`FDS`          recalibrates the head's input features per label bin     ``calibrate``
:class:`RankSim`      adds a regulariser on feature- vs label-similarity ranks ``regulariser``
:class:`CMixup`       mixes each sample with a label-near partner              ``mix``
:class:`BalancedMSE`  replaces the task loss by the batch Monte-Carlo BMC      ``task_loss``
====================  =======================================================  ===========

They combine with TFA and FLSA and with each other (``ELTAWrapper(model, "fc",
peers=[LDS(train_labels), RankSim()])``), except two that replace the task loss (LDS
and Balanced MSE), which exclude each other and a user's ``task_loss``. They are torch
only: ELTA's own equations are the backend-neutral core, these are comparison points.

Labels: every method works on label *scores*. Distribution labels (vote histograms) are
reduced to their mean score for the bins, ranks, distances and the BMC target, as the
docstrings say; the task loss that LDS weights stays the EMD between distributions.

Defaults: the hyper-parameters below are the settings each paper reports for its image
benchmarks, rescaled from those benchmarks' label units (years of age) to a 1..10 rating
scale by ``score_scale``; ``docs/design.md`` ("The peers") lists each with its provenance
and says which are this library's choice. The papers were not at hand when this module
was written, so the docstrings name each paper and method, not its equation numbers.
"""

from __future__ import annotations

from elta_core.adapters.torch.peers.base import Peer, check_peers, make_peer, task_loss_changers
from elta_core.adapters.torch.peers.binning import MAX_BINS, bin_index, gaussian_window, smooth_bins
from elta_core.adapters.torch.peers.bmse import BalancedMSE, bmc_loss
from elta_core.adapters.torch.peers.cmixup import CMixup, _beta, cmixup_probabilities  # noqa: F401
from elta_core.adapters.torch.peers.fds import FDS, fds_calibrate
from elta_core.adapters.torch.peers.lds import LDS, LDS_REWEIGHTS, lds_weights
from elta_core.adapters.torch.peers.ranksim import RankSim, _BlackboxRanks, _ranks, ranksim_loss, unique_label_rows  # noqa: F401,E501
from elta_core.peer_names import PEER_NAMES, peer_class

# Every registered peer (elta_core.peer_names), by name; loading one names its class.
PEERS: dict[str, type[Peer]] = {name: peer_class(name) for name in PEER_NAMES}

__all__ = ["BalancedMSE", "CMixup", "FDS", "LDS", "LDS_REWEIGHTS", "MAX_BINS", "PEERS", "Peer", "RankSim", "bin_index",
           "bmc_loss", "check_peers", "cmixup_probabilities", "fds_calibrate", "gaussian_window", "lds_weights",
           "make_peer", "ranksim_loss", "smooth_bins", "task_loss_changers", "unique_label_rows"]
