"""Typed settings of the ``elta`` commands: one dataclass per command, whose fields are
its options (:mod:`elta_core.app.options`). Adding an option to a command is adding one
field; where its value goes to a constructor unchanged, the field says so (``reaches``)
and the run passes it on (:func:`~elta_core.app.options.arguments_for`). Nothing here
imports a framework, so ``elta --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from elta_core.app.option_groups import FORMAT_HELP, APDSSettings, LabelFile, Loading, PeerSettings, TuneSettings
from elta_core.app.options import (at_least, check_number, floats, from_namespace, max_pseudo_labels, option, options_of,
                                   settings_parser)
from elta_core.app.recipe import RECIPES, ROUND2_LR_DIVISOR, recipe_help
from elta_core.data.labels import FORMATS
from elta_core.pseudo_labels import DEFAULT_ROUND2, ROUND2_MODES
from elta_core.training_options import LR_SCHEDULES, PRECISIONS

OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam"}  # --optimizer: the torch.optim class it names
SELECT_BEST = ("none", "srcc", "plcc")
HEADS = ("linear", "emd-mlp", "sigmoid")
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class TrainConfig(PeerSettings, APDSSettings, Loading, LabelFile):
    """``elta train``: every setting of a training run (see ``elta train --help``). Items of
    the recipe (``None`` here) are filled by :func:`elta_core.app.recipe.resolve`."""

    recipe: str = option("default", "default: this library's settings; paper: Adam, lr 1e-5, batch 48, 20 epochs, "
                         "resize 300 + random crop 256 + flip, test resize 256, the authors' heads, best validation "
                         "SRCC", choices=RECIPES)
    backbone: str = option("resnet18", "a torchvision model name, timm/<name> for any timm model (e.g. timm/"
                           "swinv2_base_window8_256; needs elta-core[timm]), or elta/small-cnn (the demo's model)")
    weights: str | None = option(None, "local weights to start from: a .pth/.pt state dict or a .safetensors file "
                                       "(no downloads; the head may differ)")
    pretrained: str | None = option(None, "start from the backbone's published ImageNet weights, downloaded once into "
                                    "the cache: timm models through the Hugging Face hub (HF_HOME, HF_HUB_OFFLINE; "
                                    "alone: the model's default tag, or the tag in --backbone timm/NAME.TAG; with a "
                                    "value: that tag), torchvision models through their weights enum (alone: DEFAULT; "
                                    "with a value: e.g. IMAGENET1K_V2; TORCH_HOME). The head is replaced for the "
                                    "rating scale", bare="default", metavar="TAG")
    head: str | None = option(None, recipe_help("head", "linear: Linear(F, C); emd-mlp: Linear(F, 64), ReLU, "
                              "Linear(64, C); sigmoid: Dropout(0.75), Linear(F, 1), sigmoid scaled to the rating "
                              "scale (a score, MSE loss; no APDS)"), choices=HEADS)
    tfa: bool = option(True, "Tail Feature Augmentation (--no-tfa: off)", action="boolean", reaches=("step.tfa",))
    num_pairs: float | None = option(None, recipe_help("num_pairs", "TFA pairs: a count (>= 1) or a fraction of "
                                                                    "the batch"), type=float,
                                    reaches=("step.num_pairs",))
    flsa: float | None = option(None, recipe_help("flsa", "FLSA weight gamma (0: off)"), type=float, metavar="WEIGHT",
                                 reaches=("step.flsa_weight",))
    align_at: str | None = option(None, "the layer whose output FLSA aligns (e.g. layer4.1.bn2; default: the head's "
                                  "input, the pooled features, as the paper)", metavar="LAYER")
    flsa_scope: str = option("global", "under torchrun: FLSA on the global batch (gathered from every process, the "
                             "same loss as one process on that batch) or on each process's own batch",
                             choices=("global", "local"))
    optimizer: str | None = option(None, recipe_help("optimizer", "the optimizer"), choices=tuple(OPTIMIZERS))
    lr: float | None = option(None, recipe_help("lr", "learning rate (at the start of --lr-schedule)"), type=float)
    lr_schedule: str | None = option(None, recipe_help("lr_schedule", "constant, or cosine: the learning rate of "
                                                       "each epoch decays from --lr towards 0 over the epochs (in "
                                                       "round 2 too, over its epochs)"), choices=LR_SCHEDULES,
                                 reaches=("self_training.lr_schedule",))
    batch_size: int | None = option(None, recipe_help("batch_size", "images per batch (per process under "
                                                                     "torchrun)"), type=at_least(1),
                                    reaches=("self_training.batch_size",))
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
                                          "(default: the file's own validation split, where it also has a test "
                                          "split or --test-labels is given)")
    test_labels: str | None = option(None, "a labelled test file (same --format) for the final evaluation "
                                           "(default: the file's test split; a file with train and validation rows "
                                           "only: its validation rows; else a random --val-fraction hold-out)")
    select_best: str | None = option(None, recipe_help("select_best", "keep the epoch with the best validation "
                                     "SRCC or PLCC (best.pt) and test that one; without a validation set "
                                     "--val-fraction of the training images is held out for it"), choices=SELECT_BEST)
    evaluate_on: str = option("test", "the split the final model is tested on: test, or validation (to choose "
                              "settings by; the test split and --test-labels are then never read)",
                              choices=("test", "validation"))
    val_fraction: float = option(0.1, "held out (seeded) for testing when the file has no split, and for validation "
                                 "when --select-best needs a validation set and there is none", type=float)
    apds: bool = option(False, "one APDS self-training round after training", action="store_true", round2_only=True)
    unlabelled: str | None = option(None, "for --apds: a folder of images or a label file (labels ignored)",
                                    round2_only=True)
    unlabelled_format: str | None = option(None, "format of --unlabelled (default: --format)", choices=FORMATS,
                                           round2_only=True)
    calibration: str | None = option(None, "for --apds: a labelled file for the grid search (default: as "
                                           "--calibrate-on says: the validation set, else training images held out "
                                           "for it, or the test split)", round2_only=True)
    calibration_format: str | None = option(None, "format of --calibration (default: --format)", choices=FORMATS,
                                            round2_only=True)
    calibrate_on: str = option("auto", "for --apds without --calibration: auto (the validation set, else a seeded "
                               "--val-fraction of the training images, held out before training) or test (the test "
                               "split, by name: (beta, t) are then chosen on the images the run is judged on)",
                               choices=("auto", "test"), round2_only=True)
    round2: str = option(DEFAULT_ROUND2, "Eq. 10: concat (pseudo-labelled images join the training set, with TFA "
                         "and FLSA) or separate (their task loss on separate batches)", choices=ROUND2_MODES,
                         reaches=("self_training.round2",), round2_only=True)
    round2_epochs: int | None = option(None, recipe_help("round2_epochs", "epochs of the APDS round"),
                                       type=at_least(1), on_resume="may_change",
                                       reaches=("self_training.epochs",), round2_only=True)
    max_pseudo_labels: str | int = option("labelled", "for --apds: keep at most this many pseudo-labels, most "
                                          "confident first: labelled (as many as labelled images), none (no cap) "
                                          "or a count; 0 is the control run: round 2 without pseudo-labels",
                                          type=max_pseudo_labels, round2_only=True)
    round2_lr: float | None = option(None, f"learning rate of the APDS round (default: --lr / {ROUND2_LR_DIVISOR:g} "
                                     "for a fresh optimizer, --lr with --round2-resume-optimizer); --resume may "
                                     "change it, and trains round 2 again from round 1", type=float,
                                     on_resume="may_change", round2_only=True)
    round1_from: str | None = option(None, "for --apds: take round 1 from another run directory (e.g. the same "
                                     "run without --apds) instead of training it again; its settings and data must be "
                                     "this run's but for APDS's own, its round 1 finished", metavar="DIR",
                                     identity=False)
    round2_resume_optimizer: bool | None = option(None, recipe_help(
        "round2_resume_optimizer", "round 2 continues round 1's optimizer and its state at --lr (off: a fresh "
        f"optimizer at --lr / {ROUND2_LR_DIVISOR:g})"), action="boolean")
    precision: str = option("fp32", "training forward under autocast (fp16 with a gradient scaler); evaluation "
                            "stays fp32", choices=PRECISIONS,
                            reaches=("self_training.precision",))
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
        object.__setattr__(self, "peer_settings", tuple(self.peer_settings))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def train_settings(arguments: list[str]) -> TrainConfig:
    """``elta train`` arguments as a :class:`TrainConfig` (argparse errors exit with status
    2, as on the command line); ``elta compare`` parses its shared arguments with it."""
    namespace = settings_parser(TrainConfig, "elta compare -- (elta train arguments)").parse_args(arguments)
    return from_namespace(TrainConfig, namespace)


# Settings that only the APDS round reads: a run that differs from another in these alone
# trains the same round 1 (--round1-from). --round2-resume-optimizer is not one of them:
# with --select-best it makes round 1 keep the best epoch's optimizer.
ROUND2_ONLY: tuple[str, ...] = tuple(f.name for f in options_of(TrainConfig) if f.metadata["round2_only"])


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
class PredictConfig(Loading, LabelFile):
    """``elta predict``: the images of ``--images`` (a folder), or of a label file."""

    checkpoint: str = option(None, "a checkpoint.pt written by elta train", required=True)
    labels: str | None = option(None, "score the images this label file names instead of a folder (--images: the "
                                      "folder its names are relative to)")
    format: str | None = option(None, FORMAT_HELP + " (with --labels)", choices=FORMATS)
    out: str = option("scores.csv", "the CSV to write: image, score, and for a distribution head std and p_1..p_C")
    batch_size: int = option(32, "images per batch", type=at_least(1))


@dataclass(frozen=True)
class ExportConfig:
    """``elta export``."""

    checkpoint: str = option(None, "a checkpoint.pt written by elta train", required=True)
    out: str = option(None, "the folder to write model.safetensors, elta_model.json and load_elta_model.py to",
                      required=True)
    torch_export: bool = option(False, "also write model.pt2, the model as a torch.export program (torch.export.load "
                                "runs it without the model's code)", action="store_true")


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
class CompareConfig(TuneSettings):
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
