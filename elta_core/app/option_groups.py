"""The groups of options that several commands share, or that make one concept of a
command's: a label file and how to read it, where the images are and how they are
loaded, APDS's grid search, the peers a run trains with, and compare's tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elta_core import apds
from elta_core.app.options import at_least, check_number, floats, option, peer_list, peer_settings, thresholds
from elta_core.comparison import SELECTION_CRITERIA
from elta_core.data.labels import FORMATS
from elta_core.peer_names import PEER_NAMES

FORMAT_HELP = ("label file format: ava (CSV with score2..score11 vote counts), ava-txt (AVA.txt), tad66k (image,score "
               "CSV or a folder of per-theme CSVs), aadb (imgList*Regression_score.txt, 0..1), para (PARA GIAA CSVs, "
               "1..5), csv (an image column and a score column or count columns; see --image-column)")


@dataclass(frozen=True)
class LabelFile:
    """A label file and how to read it (``--labels``, ``--format`` and the csv options)."""

    labels: str = option(None, "the label file (or folder, for tad66k, aadb and para)", required=True)
    format: str = option(None, FORMAT_HELP, choices=FORMATS, required=True)
    image_column: str = option("image", "for --format csv: the column of image names")
    score_column: str | None = option(None, "for --format csv: the score column (default: 'score' if present, else "
                                            "the other columns are read as vote counts)")
    scale: tuple[float, ...] = option((1.0, 10.0), "for --format csv: the rating scale of the scores", type=floats,
                                      metavar="LOW,HIGH")
    split_column: str | None = option(None, "for --format csv: a column naming each image's split (train, "
                                            "validation, test; a file with train and validation rows only tests on "
                                            "its validation rows)")

    def check_format_given(self) -> None:
        """Where ``--format`` is optional (a command that reads a label file only if one is
        given): refuse ``--labels`` without it."""
        if self.labels and not self.format:
            raise ValueError("format: give --format with --labels")

    def csv_options(self) -> dict[str, Any]:
        """The --format csv options, for :func:`elta_core.data.load_labels`."""
        if self.format != "csv":
            return {}
        check_number(self.scale, "--scale", "LOW,HIGH: two finite numbers with LOW < HIGH", lambda _: True)
        if len(self.scale) != 2 or not self.scale[0] < self.scale[1]:
            raise ValueError(f"scale: expected LOW,HIGH with LOW < HIGH, got {self.scale}")
        return {"image_column": self.image_column, "score_column": self.score_column, "scale": tuple(self.scale),
                "split_column": self.split_column}


@dataclass(frozen=True)
class Loading:
    """Where the images are and how they are loaded."""

    images: str | None = option(None, "folder the label file's image names are relative to")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)", identity=False)
    workers: int | None = option(None, "DataLoader worker processes per process (default: the machine's cores "
                                       "divided among the processes torchrun starts on it, less this process's "
                                       "--threads; 0: load in the main process)", type=at_least(0), identity=False)
    skip_unreadable: bool = option(False, "skip missing or corrupt images and report how many", action="store_true")
    quiet: bool = option(False, "no progress bars", action="store_true", identity=False)
    threads: int | None = option(None, "torch threads in each process (default: the cores the loader workers leave "
                                       "it; on a machine other jobs keep busy, 1 is often much faster)",
                                 type=at_least(1), identity=False)


@dataclass(frozen=True)
class APDSSettings:
    """The grid search and the pseudo-labels of APDS."""

    betas: tuple[float, ...] = option(apds.DEFAULT_BETAS, "APDS betas, comma-separated", type=floats,
                                      reaches=("self_training.betas",), round2_only=True)
    thresholds: str | tuple[float, ...] = option(
        apds.DEFAULT_THRESHOLDS, "APDS thresholds: auto (the paper's 0.70..0.90, or when they select nothing the "
        "0.5..0.9 quantiles of the calibration set's confidence), paper, quantiles, or comma-separated numbers in "
        "(0, 1]", type=thresholds,
        reaches=("self_training.thresholds",), round2_only=True)
    min_selected: float = option(apds.DEFAULT_MIN_SELECTED, "the fewest pseudo-labels a grid cell must select: a "
                                 "count, or a fraction of the calibration set", type=float,
                                 reaches=("self_training.min_selected",), round2_only=True)
    pseudo_label: str = option(apds.DEFAULT_PSEUDO_LABEL, "train on the sharpened distribution (Eq. 10) or the "
                               "unsharpened prediction (the authors' code)", choices=("sharpened", "prediction"),
                               reaches=("self_training.pseudo_label",), round2_only=True)

    def __post_init__(self) -> None:
        check_number(self.betas, "--betas", "comma-separated finite numbers >= 0", lambda b: b >= 0)
        if not isinstance(self.thresholds, str):
            check_number(self.thresholds, "--thresholds", "auto, paper, quantiles or comma-separated numbers in (0, 1]",
                         lambda t: 0 < t <= 1)
        if self.min_selected is not None:
            check_number(self.min_selected, "--min-selected", "a count >= 1 or a fraction in (0, 1)",
                         lambda m: 0 < m < 1 or (m >= 1 and m == int(m)))
        if self.min_selected is not None and self.min_selected >= 1:  # a count; below 1, a fraction
            object.__setattr__(self, "min_selected", int(self.min_selected))


@dataclass(frozen=True)
class PeerSettings:
    """The established methods a run trains with (``adapters/torch/peers``), and their
    settings (read by ``elta train``'s ``_peers``)."""

    peers: tuple[str, ...] = option((), "established imbalanced-regression methods to train with, comma-separated: "
                                    f"{', '.join(PEER_NAMES)} (their authors' defaults; beside TFA and FLSA unless "
                                    "--no-tfa --flsa 0)", type=peer_list, metavar="NAMES")
    peer_settings: tuple[str, ...] = option((), "the --peers' settings over their authors' defaults: keyword arguments "
                                            "of their classes, e.g. ranksim.weight=1,lds.sigma=1", type=peer_settings,
                                            metavar="PEER.SETTING=VALUE,...")


@dataclass(frozen=True)
class TuneSettings:
    """``elta compare --tune`` (:mod:`elta_core.app.tuning`)."""

    tune: int = option(0, "first choose each method's main settings: the first TRIALS points of its search space "
                       "(below; alone: 4), each trained with --tune-seeds and scored on the validation split by "
                       "--tune-criterion, the test split unread; then every seed trains at the chosen setting "
                       "(needs a fixed test split: --test-labels or a split column)", type=at_least(0),
                       bare=4, metavar="TRIALS")
    tune_seeds: int = option(2, "seeds of each trial: 1000, 1001, ... (apart from the reported seeds)",
                             type=at_least(1))
    tune_criterion: str = option("mae", "what a trial is scored by on the validation split: " + "; ".join(
        f"{name}: {text}" for name, (_, _, text) in SELECTION_CRITERIA.items()).replace("%", "%%"),  # argparse's %
                                 choices=tuple(SELECTION_CRITERIA))
