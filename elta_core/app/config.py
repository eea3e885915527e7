"""Typed settings of the ``elta`` commands: one dataclass per command, the command line
generated from their fields.

Each field is one option: its default, its help, its choices and how it is parsed are
the field's (:func:`option`), and so is its place in a run's identity: ``identity=False``
for the settings that do not change a result (``--out``, ``--workers``, ...), and
``on_resume="may_change"`` for those a resumed run may change (``--epochs``). Adding an
option to a command is adding one field; :func:`add_options` builds the argparse
options and :func:`from_namespace` the config. Nothing here imports a framework, so
``elta --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from elta_core import apds
from elta_core.app.recipe import RECIPES, ROUND2_LR_DIVISOR, recipe_help
from elta_core.data.labels import FORMATS
from elta_core.peer_names import PEER_NAMES
from elta_core.pseudo_labels import DEFAULT_ROUND2, ROUND2_MODES

OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("constant", "cosine")  # elta_core.adapters.torch.loop.LR_SCHEDULES (this module imports no framework)
SELECT_BEST = ("none", "srcc", "plcc")
HEADS = ("linear", "emd-mlp", "sigmoid")


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
        raise argparse.ArgumentTypeError(f"expected labelled, none or an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected labelled, none or an int >= 0, got {value}")
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


MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
MAX_IMAGE_SIZE = 4096


# -- fields as options -------------------------------------------------------------------


def option(default: Any = None, help: str = "", *, flag: str | None = None, type: Callable | None = None,
           choices: Sequence[str] | None = None, action: str | None = None, metavar: str | None = None,
           required: bool = False, positional: bool = False, hidden: bool = False, identity: bool = True,
           on_resume: str = "fixed") -> Any:
    """A dataclass field that is also a command-line option. ``action``: ``"store_true"``
    or ``"boolean"`` (``--x`` / ``--no-x``); ``identity=False``: the setting does not
    change a run's result; ``on_resume="may_change"``: ``--resume`` may change it."""
    metadata = {"help": help, "flag": flag, "type": type, "choices": choices, "action": action, "metavar": metavar,
                "required": required, "positional": positional, "hidden": hidden, "identity": identity,
                "on_resume": on_resume}
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


# -- the option groups shared by several commands ------------------------------------------

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
                                            "validation, test)")

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

    betas: tuple[float, ...] = option(apds.DEFAULT_BETAS, "APDS betas, comma-separated", type=floats)
    thresholds: str | tuple[float, ...] = option(
        apds.DEFAULT_THRESHOLDS, "APDS thresholds: auto (the paper's 0.70..0.90, or when they select nothing the "
        "0.5..0.9 quantiles of the calibration set's confidence), paper, quantiles, or comma-separated numbers in "
        "(0, 1]", type=thresholds)
    min_selected: float = option(apds.DEFAULT_MIN_SELECTED, "the fewest pseudo-labels a grid cell must select: a "
                                 "count, or a fraction of the calibration set", type=float)
    pseudo_label: str = option(apds.DEFAULT_PSEUDO_LABEL, "train on the sharpened distribution (Eq. 10) or the "
                               "unsharpened prediction (the authors' code)", choices=("sharpened", "prediction"))

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


# Settings that only the APDS round reads: a run that differs from another in these alone
# trains the same round 1 (--round1-from). --round2-resume-optimizer is not one of them:
# with --select-best it makes round 1 keep the best epoch's optimizer.
ROUND2_ONLY = ("apds", "unlabelled", "unlabelled_format", "calibration", "calibration_format", "calibrate_on",
               "round2", "round2_epochs", "round2_lr", "max_pseudo_labels", "betas", "thresholds", "min_selected",
               "pseudo_label")


# -- the commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig(APDSSettings, Loading, LabelFile):
    """``elta train``: every setting of a training run (see ``elta train --help``). Items of
    the recipe (``None`` here) are filled by :func:`elta_core.app.recipe.resolve`."""

    recipe: str = option("default", "default: this library's settings; paper: Adam, lr 1e-5, batch 48, 20 epochs, "
                         "resize 300 + random crop 256 + flip, test resize 256, the authors' heads, best validation "
                         "SRCC", choices=RECIPES)
    backbone: str = option("resnet18", "a torchvision model name, or timm/<name> for any timm model (e.g. "
                           "timm/swinv2_base_window8_256; needs elta-core[timm])")
    weights: str | None = option(None, "local weights to start from: a .pth/.pt state dict or a .safetensors file "
                                       "(no downloads; the head may differ)")
    head: str | None = option(None, recipe_help("head", "linear: Linear(F, C); emd-mlp: Linear(F, 64), ReLU, "
                              "Linear(64, C); sigmoid: Dropout(0.75), Linear(F, 1), sigmoid scaled to the rating "
                              "scale (a score, MSE loss; no APDS)"), choices=HEADS)
    tfa: bool = option(True, "Tail Feature Augmentation (--no-tfa: off)", action="boolean")
    num_pairs: float | None = option(None, recipe_help("num_pairs", "TFA pairs: a count (>= 1) or a fraction of "
                                                                    "the batch"), type=float)
    flsa: float | None = option(None, recipe_help("flsa", "FLSA weight gamma (0: off)"), type=float, metavar="WEIGHT")
    align_at: str | None = option(None, "the layer whose output FLSA aligns (e.g. layer4.1.bn2; default: the head's "
                                  "input, the pooled features, as the paper)", metavar="LAYER")
    flsa_scope: str = option("global", "under torchrun: FLSA on the global batch (gathered from every process, the "
                             "same loss as one process on that batch) or on each process's own batch",
                             choices=("global", "local"))
    peers: tuple[str, ...] = option((), "established imbalanced-regression methods to train with, comma-separated: "
                                    f"{', '.join(PEER_NAMES)} (their authors' defaults; beside TFA and FLSA unless "
                                    "--no-tfa --flsa 0)", type=peer_list, metavar="NAMES")
    optimizer: str | None = option(None, recipe_help("optimizer", "the optimizer"), choices=OPTIMIZERS)
    lr: float | None = option(None, recipe_help("lr", "learning rate (at the start of --lr-schedule)"), type=float)
    lr_schedule: str | None = option(None, recipe_help("lr_schedule", "constant, or cosine: the learning rate of "
                                                       "each epoch decays from --lr towards 0 over the epochs (in "
                                                       "round 2 too, over its epochs)"), choices=LR_SCHEDULES)
    batch_size: int | None = option(None, recipe_help("batch_size", "images per batch (per process under "
                                                                     "torchrun)"), type=at_least(1))
    epochs: int | None = option(None, recipe_help("epochs", "training epochs (may grow on --resume under a constant --lr-schedule)"),
                                type=at_least(1), on_resume="may_change")
    image_size: int | None = option(None, recipe_help("image_size", "input size in pixels (the training crop)"),
                                    type=at_least(8))
    resize: int | None = option(None, recipe_help("resize", "images are resized to this square before the random "
                                                             "crop"), type=at_least(8))
    eval_transform: str | None = option(None, recipe_help("eval_transform", "evaluation images: crop (resize as in "
                                        "training, centre crop) or resize (straight to --image-size)"),
                                        choices=("crop", "resize"))
    val_labels: str | None = option(None, "a labelled validation file (same --format), evaluated every epoch "
                                          "(default: the file's own validation split, if any)")
    test_labels: str | None = option(None, "a labelled test file (same --format) for the final evaluation "
                                           "(default: the file's test split, else a random --val-fraction hold-out)")
    select_best: str | None = option(None, recipe_help("select_best", "keep the epoch with the best validation "
                                     "SRCC or PLCC (best.pt) and test that one; without a validation set "
                                     "--val-fraction of the training images is held out for it"), choices=SELECT_BEST)
    val_fraction: float = option(0.1, "held out (seeded) for testing when the file has no split, and for validation "
                                 "when --select-best needs a validation set and there is none", type=float)
    apds: bool = option(False, "one APDS self-training round after training", action="store_true")
    unlabelled: str | None = option(None, "for --apds: a folder of images or a label file (labels ignored)")
    unlabelled_format: str | None = option(None, "format of --unlabelled (default: --format)", choices=FORMATS)
    calibration: str | None = option(None, "for --apds: a labelled file for the grid search (default: as "
                                           "--calibrate-on says: the validation set, else training images held out "
                                           "for it, or the test split)")
    calibration_format: str | None = option(None, "format of --calibration (default: --format)", choices=FORMATS)
    calibrate_on: str = option("auto", "for --apds without --calibration: auto (the validation set, else a seeded "
                               "--val-fraction of the training images, held out before training) or test (the test "
                               "split, by name: (beta, t) are then chosen on the images the run is judged on)",
                               choices=("auto", "test"))
    round2: str = option(DEFAULT_ROUND2, "Eq. 10: concat (pseudo-labelled images join the training set, with TFA "
                         "and FLSA) or separate (their task loss on separate batches)", choices=ROUND2_MODES)
    round2_epochs: int | None = option(None, recipe_help("round2_epochs", "epochs of the APDS round"),
                                       type=at_least(1), on_resume="may_change")
    max_pseudo_labels: str | int = option("labelled", "for --apds: keep at most this many pseudo-labels, most "
                                          "confident first: labelled (as many as labelled images), none (no cap) "
                                          "or a count; 0 is the control run: round 2 without pseudo-labels",
                                          type=max_pseudo_labels)
    round2_lr: float | None = option(None, f"learning rate of the APDS round (default: --lr / {ROUND2_LR_DIVISOR:g} "
                                     "for a fresh optimizer, --lr with --round2-resume-optimizer); --resume may "
                                     "change it, and trains round 2 again from round 1", type=float,
                                     on_resume="may_change")
    round1_from: str | None = option(None, "for --apds: take round 1 from another run directory (e.g. the same "
                                     "run without --apds) instead of training it again; its settings and data must be "
                                     "this run's but for APDS's own, its round 1 finished", metavar="DIR",
                                     identity=False)
    round2_resume_optimizer: bool | None = option(None, recipe_help(
        "round2_resume_optimizer", "round 2 continues round 1's optimizer and its state at --lr (off: a fresh "
        f"optimizer at --lr / {ROUND2_LR_DIVISOR:g})"), action="boolean")
    precision: str = option("fp32", "training forward under autocast (fp16 with a gradient scaler); evaluation "
                            "stays fp32", choices=("fp32", "bf16", "fp16"))
    channels_last: bool = option(False, "channels-last memory format (faster convolutions on recent GPUs)",
                                 action="store_true", identity=False)
    compile: bool = option(False, "torch.compile the model (the fused FLSA kernels then give way to the reference)",
                           action="store_true", identity=False)
    seed: int = option(0, "seeds the split, the model, the data order and TFA", type=int)
    out: str = option("elta_runs/train", "the run directory (must be new or empty unless --resume)", identity=False)
    resume: bool = option(False, "continue the run in --out (its settings must match)", action="store_true",
                          identity=False)
    checkpoint_every: int = option(1, "write checkpoint.pt every N epochs of round 1, and after its last epoch and "
                                   "each new --select-best epoch: on small data writing it costs more than the "
                                   "epoch; --resume trains the epochs after it again, to the same result",
                                   type=at_least(1), metavar="N", identity=False)
    stop_after_epoch: int = option(0, "", type=int, hidden=True, identity=False)

    command: ClassVar[str] = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_pairs is not None:
            check_number(self.num_pairs, "--num-pairs", "a count >= 1 or a fraction of the batch in (0, 1)",
                         lambda n: 0 < n < 1 or (n >= 1 and n == int(n)))
        if self.flsa is not None:
            check_number(self.flsa, "--flsa", "a finite weight >= 0", lambda w: w >= 0)
        check_number(self.seed, "--seed", f"an int in [0, {MAX_SEED}]", lambda n: 0 <= n <= MAX_SEED)
        if self.image_size is not None:
            check_number(self.image_size, "--image-size", f"a side in [8, {MAX_IMAGE_SIZE}] pixels",
                         lambda n: 8 <= n <= MAX_IMAGE_SIZE)
        if self.num_pairs is not None and self.num_pairs >= 1:  # a count; below 1, a fraction of the batch
            object.__setattr__(self, "num_pairs", int(self.num_pairs))
        object.__setattr__(self, "peers", tuple(self.peers))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EvaluateConfig(Loading, LabelFile):
    """``elta evaluate``: without ``--labels``, the run's own label file and test split."""

    labels: str | None = option(None, "the label file (or folder, for tad66k, aadb and para); default: the run's "
                                      "own, with --split test")
    format: str | None = option(None, FORMAT_HELP + " (default: the run's)", choices=FORMATS)
    checkpoint: str = option(None, "a checkpoint.pt written by elta train", required=True)
    split: str | None = option(None, "evaluate only this split (e.g. test): the file's split column, else the split "
                                     "the run used (split.csv beside the checkpoint)")
    out: str | None = option(None, "write evaluation.json and evaluation.csv here")
    batch_size: int = option(32, "images per batch", type=at_least(1))


@dataclass(frozen=True)
class PseudoLabelConfig(APDSSettings, Loading, LabelFile):
    """``elta pseudo-label``: ``labels`` is the calibration file (``--calibration``)."""

    labels: str = option(None, "the labelled calibration file (or folder, for tad66k, aadb and para)",
                         flag="--calibration", required=True)
    checkpoint: str = option(None, "a checkpoint.pt written by elta train", required=True)
    unlabelled: str = option(None, "a folder of images or a label file", required=True)
    unlabelled_format: str | None = option(None, "format of --unlabelled (default: --format)", choices=FORMATS)
    out: str = option("elta_runs/pseudo_labels", "where pseudo_labels.csv and grid.md go")
    batch_size: int = option(32, "images per batch", type=at_least(1))


@dataclass(frozen=True)
class PrepareConfig(LabelFile):
    """``elta prepare``."""

    images: str | None = option(None, "folder the label file's image names are relative to")
    size: int = option(300, "side of the square images, pixels", type=at_least(8))
    quality: int = option(95, "JPEG quality of the written images", type=at_least(1))
    out: str = option(None, "the folder for images/ (and its manifest.json)", required=True)
    workers: int | None = option(None, "worker processes (default: this machine's cores)", type=at_least(0))
    quiet: bool = option(False, "no progress bar", action="store_true")


@dataclass(frozen=True)
class StatsConfig(LabelFile):
    """``elta stats``: ``labels`` is positional."""

    labels: str = option(None, "the label file (or folder, for tad66k, aadb and para)", positional=True)
    json: bool = option(False, "print the summary as JSON", action="store_true")
    plot: str | None = option(None, "save a histogram with the tails readable", metavar="FILE.png")


@dataclass(frozen=True)
class SynthConfig:
    """``elta synth``."""

    out: str = option(None, "folder for images/ and labels.csv", required=True)
    count: int = option(200, "how many images", type=at_least(2))
    image_size: int = option(64, "side of the square images, pixels", type=at_least(8))
    seed: int = option(0, "the dataset's seed", type=int)
    split: tuple[float, ...] | None = option(None, "also write train.csv, val.csv and test.csv with these fractions "
                                                   "of the images", type=floats, metavar="TRAIN,VAL,TEST")


@dataclass(frozen=True)
class DemoCommand:
    """``elta demo``."""

    quick: bool = option(False, "a smaller run (about a minute on 2 idle cores; the full run about 10 minutes)",
                         action="store_true")
    out: str = option("elta_demo", "where table.md, results.json and figure.png go")
    quiet: bool = option(False, "no progress (the results are the same)", action="store_true")
    threads: int = option(1, "torch threads (1: the fastest on 2 cores, and not slowed down by other jobs; the "
                          "results depend on it in their last digits)", type=at_least(1))


@dataclass(frozen=True)
class DoctorConfig:
    """``elta doctor``."""

    device: str | None = option(None, "cpu, cuda or cuda:N (default: the CPU and every CUDA device)")
    quick: bool = option(False, "fewer shapes and repeats", action="store_true")
    compile_backend: str = option("inductor", "torch.compile backend of the reference timed beside the kernels "
                                  "('none': not timed)")
    json: str | None = option(None, "also write every check here", metavar="FILE.json")
    quiet: bool = option(False, "no progress lines", action="store_true")


@dataclass(frozen=True)
class CompareConfig:
    """``elta compare``: ``train_arguments`` are ``elta train`` arguments (after ``--``)."""

    methods: str | None = option(None, "comma-separated; the first is the reference of the differences (default: "
                                       "baseline,tfa,flsa,elta)")
    seeds: int | None = option(None, "seeds 0..N-1 (default 3; --quick 2)", type=at_least(2))
    out: str = option("elta_compare", "where runs/, compare.md, .json and .png go")
    quick: bool = option(False, "on the built-in dataset: 160 images, 2 epochs, 2 seeds", action="store_true")
    quiet: bool = option(False, "no progress (the results are the same)", action="store_true")
    threads: int | None = option(None, "torch threads of every run (as elta train --threads)", type=at_least(1))
    train_arguments: list[str] = option([], "-- then the elta train arguments shared by every run (data, backbone, "
                                        "recipe, ...)", action="remainder")
