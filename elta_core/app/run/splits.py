"""The rows a run trains, validates, calibrates and tests on: chosen from the label files
and the settings (:func:`data_splits`), checked before any training, and recorded as the
run's ``split.csv`` (which ``elta evaluate --split`` and ``--round1-from`` read back)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from elta_core.adapters.torch import distributed as ddp
from elta_core.app import recipe
from elta_core.app.config import TrainConfig
from elta_core.data.labels import LabelTable, load_labels
from elta_core.io import atomic_write_text

SPLIT_FILE = "split.csv"  # image, split: the rows a run trained, validated, calibrated and tested on
RUN_SPLITS = ("train", "validation", "calibration", "test")  # the names split.csv gives them


class DataSplits(NamedTuple):
    train: LabelTable
    validation: LabelTable | None
    test: LabelTable
    calibration: LabelTable | None = None  # APDS's grid search, held out of the training rows


def _rows(table: LabelTable, names: tuple[str, ...]) -> np.ndarray:
    return np.array([s in names for s in table.split])


def hold_out_rows(table: LabelTable, fraction: float, seed: int) -> tuple[LabelTable, LabelTable]:
    """The rows of ``table`` kept and a seeded ``fraction`` held out (at least one), each in
    the file's order (``fraction`` in (0, 1) was checked with the run's settings)."""
    order = np.random.default_rng(seed).permutation(len(table))
    cut = max(1, int(round(len(table) * fraction)))
    return table.subset(np.sort(order[cut:])), table.subset(np.sort(order[:cut]))


def split_table(table: LabelTable, val_fraction: float, seed: int) -> tuple[LabelTable, LabelTable]:
    """Training and test rows: the file's own split where it has one
    (:func:`own_test_split`), else a seeded random ``val_fraction`` hold-out."""
    tested = own_test_split(table)
    if tested is None:
        return hold_out_rows(table, val_fraction, seed)
    return table.subset(_rows(table, ("train",))), table.subset(_rows(table, (tested,)))


def own_test_split(table: LabelTable) -> str | None:
    """The split of a file with training rows that :func:`split_table` tests on: its test
    rows, else its validation rows; None without either."""
    split = set(table.split) if table.split is not None else set()
    return next((s for s in ("test", "testnew", "validation", "val") if s in split), None) if "train" in split else None


def data_splits(settings: TrainConfig, table: LabelTable) -> DataSplits:
    """Training, validation and test rows. Test: ``--test-labels``, else the file's test
    split, else a random hold-out. Validation: ``--val-labels``, else the file's validation
    split (when it also has a test split), else, when ``--select-best`` or
    ``--evaluate-on validation`` needs one, a random ``--val-fraction`` of the training
    rows. With ``--evaluate-on validation`` the validation rows are also the rows tested,
    and the test split is left out unread (``--test-labels`` is not opened)."""
    load = lambda path: load_labels(path, settings.format, image_root=settings.images, **settings.csv_options())  # noqa: E731
    on_validation = settings.evaluate_on == "validation"
    if settings.test_labels:
        train_rows, test = table, None if on_validation else load(settings.test_labels)
        if table.split is not None and "train" in table.split:
            train_rows = table.subset(_rows(table, ("train",)))
    else:
        train_rows, test = split_table(table, settings.val_fraction, settings.seed)
        if own_test_split(table) in ("validation", "val") and ddp.is_main() and not on_validation:
            print(f"split: {table.source} has train and validation rows and no test rows; its validation rows are the "
                  "test split (with --test-labels FILE they validate, and FILE tests)")
    validation = None
    if settings.val_labels:
        validation = load(settings.val_labels)
    elif has_own_validation_split(table, settings.test_labels):
        validation = table.subset(_rows(table, ("validation", "val")))
    elif settings.select_best != "none" or on_validation:
        train_rows, validation = hold_out_rows(train_rows, settings.val_fraction, settings.seed + 1)
        if ddp.is_main():
            needs = "select-best" if settings.select_best != "none" else "evaluate-on validation"
            print(f"{needs}: no validation set given; holding out {len(validation)} training images for it "
                  "(--val-fraction)")
    if on_validation:
        test = validation
    calibration = None
    if settings.apds and not settings.calibration and validation is None and settings.calibrate_on == "auto":
        train_rows, calibration = hold_out_rows(train_rows, settings.val_fraction, settings.seed + 2)
        if ddp.is_main():
            print(f"apds: no validation set given; holding out {len(calibration)} training images to calibrate "
                  "(beta, t) on (--val-fraction; --calibrate-on test would use the test split)")
    return DataSplits(train_rows, validation, test, calibration)


def holds_out_calibration(settings: TrainConfig) -> bool:
    """Whether an ``--apds`` run holds training images out to calibrate (beta, t) on (no
    validation set, no ``--calibration``): its round 1 then trains on fewer rows than the
    same run without APDS (:func:`data_splits`)."""
    if not settings.apds or settings.calibration or settings.calibrate_on != "auto" or settings.val_labels:
        return False
    table = load_labels(settings.labels, settings.format, image_root=settings.images, **settings.csv_options())
    if recipe.resolve(settings, table.distributions is not None).select_best != "none":
        return False  # its validation hold-out calibrates
    return not has_own_validation_split(table, settings.test_labels)


def has_own_validation_split(table: LabelTable, test_labels: str | None = None) -> bool:
    """Whether the label file's validation rows are the validation set (:func:`data_splits`):
    where it names test rows beside them, or the test split is another file
    (``--test-labels``); without either, they are the test split (:func:`split_table`)."""
    split = set(table.split) if table.split is not None else set()
    return bool((split & {"test", "testnew"} or test_labels) and split & {"validation", "val"})


SPLIT_NAMES = ("train", "validation", "val", "test", "testnew")


def check_splits(table: LabelTable, splits: DataSplits) -> None:
    """Refuse, before training, what would make the reported numbers wrong: split names
    that are not splits, test images that are also training images, a test set too small
    for the metrics."""
    if table.split is not None:
        unknown = sorted(set(table.split) - set(SPLIT_NAMES) - {""})
        if unknown:
            raise ValueError(f"split: {table.source} names split(s) {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(SPLIT_NAMES)} (its rows would otherwise be trained on)")
    trained = set(splits.train.images)
    for argument, name, part in (("test_labels", "test", splits.test), ("val_labels", "validation", splits.validation),
                                 ("calibration", "calibration", splits.calibration)):
        shared = [image for image in (part.images if part is not None else []) if image in trained]
        if shared:
            raise ValueError(f"{argument}: {len(shared)} of the {len(part)} {name} images are also training images "
                             f"(e.g. {Path(shared[0]).name}); their metrics would be training metrics: give disjoint "
                             "files")
    if len(splits.test) < 3 and len(splits.train) >= 2:  # too few training images: named where they are counted
        raise ValueError(f"labels: the test split holds {len(splits.test)} image(s); the metrics need at least 3 "
                         "(give --test-labels, or a larger --val-fraction)")


def check_choices_not_on_test(settings: TrainConfig, splits: DataSplits) -> None:
    """Refuse a validation split that shares images with the test split where it chooses
    something: the best epoch (``--select-best``) or APDS's (beta, t); the choice would be
    made on the test set (``--calibrate-on test`` is the way to ask for that)."""
    if splits.validation is None or not (settings.select_best != "none" or (settings.apds and not settings.calibration)):
        return
    if splits.test is splits.validation:  # --evaluate-on validation: choosing on these rows is what it is for
        return
    tested = set(splits.test.images)
    shared = [image for image in splits.validation.images if image in tested]
    if shared:
        what = "the best epoch" if settings.select_best != "none" else "APDS's (beta, t)"
        raise ValueError(f"val_labels: {len(shared)} of the {len(splits.validation)} validation images are also test "
                         f"images (e.g. {Path(shared[0]).name}), so {what} would be chosen on the test set: give "
                         "--val-labels a file disjoint from the test split")


def split_images(splits: DataSplits) -> dict[str, list[str]]:
    """The images of each split a run uses, by the names ``split.csv`` gives them."""
    parts = (splits.train, splits.validation, splits.calibration,
             None if splits.test is splits.validation else splits.test)  # --evaluate-on validation: no test rows
    return {name: list(part.images) for name, part in zip(RUN_SPLITS, parts) if part is not None}


def write_split(out: Path, splits: DataSplits) -> None:
    rows = [(image, name) for name, images in split_images(splits).items() for image in images]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([("image", "split"), *rows])
    atomic_write_text(out / SPLIT_FILE, buffer.getvalue())


def read_split(path: Path, remedy: str) -> dict[str, list[str]]:
    """A run's ``split.csv``: the images of each split, in the file's order; a file that is
    not one (damaged, edited, not UTF-8) is named with ``remedy``."""
    rows: dict[str, list[str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if reader.fieldnames is None or not {"image", "split"} <= set(reader.fieldnames):
                raise ValueError(f"its header is {reader.fieldnames}, not image,split")
            for row in reader:
                if row["split"] not in RUN_SPLITS or not row["image"] or None in row:
                    raise ValueError(f"line {reader.line_num} is not an image and one of its splits")
                rows.setdefault(row["split"], []).append(row["image"])
    except (ValueError, csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"split: {path} is damaged ({str(error).splitlines()[0][:200]}); {remedy}") from None
    return rows


def run_split(checkpoint: Path, table: LabelTable, name: str) -> LabelTable:
    """The rows of ``table`` that the run of ``checkpoint`` put in split ``name``."""
    path = checkpoint.parent / SPLIT_FILE
    if not path.is_file():
        raise ValueError(f"split: {table.source} has no split column and {path} is missing (a run of an older "
                         "version?); give --labels a file with a split column, or the test file itself")
    wanted = set(read_split(path, "give --labels a file with a split column, or the test file itself").get(name, []))
    if not wanted:
        raise ValueError(f"split: the run in {checkpoint.parent} has no {name!r} split (its {path.name} lists train, "
                         "validation, calibration and test)")
    rows = np.array([image in wanted for image in table.images])
    if rows.sum() != len(wanted):
        raise ValueError(f"split: {rows.sum()} of the run's {len(wanted)} {name} images are in {table.source}; is it "
                         "the file the run was trained on?")
    return table.subset(rows)
