"""Label files of the aesthetics datasets (the official formats; docs/design.md lists them), read into one plain table.

Every loader returns a :class:`LabelTable`: image paths, scores on the dataset's own
scale, score distributions where the file has vote counts, and split and theme where
known. Framework adapters turn the table into datasets. Only the standard library and
NumPy are used. A malformed file is rejected with :class:`LabelFileError`, which names
the file and the line.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from elta_core import _checks
from elta_core.data.table import LabelTable

FORMATS = ("ava", "ava-txt", "tad66k", "aadb", "para", "csv")
AVA_COUNT_COLUMNS = [f"score{k}" for k in range(2, 12)]
PARA_BINS = [f"aestheticScore_{v:.1f}" for v in np.arange(1.0, 5.01, 0.5)]


class LabelFileError(ValueError):
    """A label file that cannot be read: the message names the file and the line."""


# -- helpers -----------------------------------------------------------------------


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        return _checks.finite_number(value, column)
    except ValueError:
        raise LabelFileError(f"{path}: line {line}: column {column!r}: expected a finite number, got {value!r}") from None


def _existing_file(path: Path) -> Path:
    if path.is_dir():
        raise LabelFileError(f"{path}: is a directory; expected a label file")
    if not path.is_file():
        raise FileNotFoundError(f"labels: no such file: {path}")
    return path


def _text(path: Path) -> str:
    """The file's text (UTF-8, a BOM allowed), or an error naming the line of a bad byte."""
    data = _existing_file(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LabelFileError(f"{path}: line {line}: not UTF-8 text (byte {data[error.start]:#04x} at offset "
                             f"{error.start}); save the file as UTF-8") from None


def _read_csv(path: Path, required: Iterable[str]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and (line number, row) pairs; a missing required column is an error."""
    # "image, score" (a space after each comma) is common in hand-written files: the
    # spaces are not part of the names or the values
    reader = csv.DictReader(io.StringIO(_text(path), newline=""), skipinitialspace=True)
    if reader.fieldnames:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    header = reader.fieldnames or []
    if not header:
        raise LabelFileError(f"{path}: the file is empty; expected a header line and one row per image")
    missing = [c for c in required if c not in header]
    if missing:
        raise LabelFileError(f"{path}: line 1: missing column(s) {', '.join(missing)}; header is {', '.join(header)}")
    rows = []
    for row in reader:
        if None in row or any(value is None for value in row.values()):
            raise LabelFileError(f"{path}: line {reader.line_num}: expected {len(header)} fields")
        rows.append((reader.line_num, row))
    return header, rows


def _whitespace_rows(path: Path, width: int, expected: str):
    """(line number, fields) of a whitespace-separated file; blank lines are skipped and a
    row with another number of fields than ``width`` is rejected naming ``expected``."""
    for line_number, line in enumerate(_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            raise LabelFileError(f"{path}: line {line_number}: expected {expected}, got {len(fields)} field(s): {line!r}")
        yield line_number, fields


def _counts_to_distribution(counts: np.ndarray, path: Path, lines: list[int]) -> np.ndarray:
    for k, row in enumerate(counts):
        if (row < 0).any():
            raise LabelFileError(f"{path}: line {lines[k]}: negative vote count")
        if row.sum() <= 0:
            raise LabelFileError(f"{path}: line {lines[k]}: no votes")
    return counts / counts.sum(axis=1, keepdims=True)


def _join(root: str | os.PathLike | None, name: str) -> str:
    return str(Path(root) / name) if root is not None else name


def _grid(scale: tuple[float, float], levels: int = 10) -> np.ndarray:
    return np.linspace(scale[0], scale[1], levels)


def _check_scores(scores: np.ndarray, scale: tuple[float, float], path: Path, lines: list[int]) -> None:
    outside = np.flatnonzero((scores < scale[0]) | (scores > scale[1]))
    if outside.size:
        k = int(outside[0])
        raise LabelFileError(f"{path}: line {lines[k]}: score {scores[k]:g} outside the scale {scale[0]:g}..{scale[1]:g}")


# -- loaders -----------------------------------------------------------------------


def read_ava_csv(path: str | os.PathLike, image_root: str | os.PathLike | None = None, image_suffix: str = ".jpg") -> LabelTable:
    """AVA CSV (``image_id,score2..score11,...``): vote counts of ratings 1..10."""
    path = Path(path)
    _, rows = _read_csv(path, ["image_id", *AVA_COUNT_COLUMNS])
    lines = [line for line, _ in rows]
    counts = np.array([[_number(row[c], path, line, c) for c in AVA_COUNT_COLUMNS] for line, row in rows]).reshape(-1, 10)
    dist = _counts_to_distribution(counts, path, lines)
    values = np.arange(1.0, 11.0)
    images = [_join(image_root, f"{row['image_id']}{image_suffix}") for _, row in rows]
    return LabelTable(images, dist @ values, dist, values, (1.0, 10.0), source=str(path),
                      extra={"counts": counts, "where": [f"line {n}" for n in lines]})


def _read_id_list(path: str | os.PathLike | None) -> set[str] | None:
    if path is None:
        return None
    return {line.strip().split(".")[0] for line in Path(path).read_text().splitlines() if line.strip()}


def read_ava_txt(
    path: str | os.PathLike,
    train_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
) -> LabelTable:
    """Original ``AVA.txt`` (15 space-separated integers per line), with the official
    split lists (``generic_ls_train.jpgl`` / ``generic_test.jpgl``) when given."""
    path = _existing_file(Path(path))
    ids, counts, lines = [], [], []
    for line_number, fields in _whitespace_rows(path, 15, "15 fields"):
        ids.append(fields[1])
        counts.append([_number(v, path, line_number, f"rating {k + 1}") for k, v in enumerate(fields[2:12])])
        lines.append(line_number)
    counts_array = np.array(counts, dtype=float).reshape(-1, 10)
    dist = _counts_to_distribution(counts_array, path, lines)
    train, test = _read_id_list(train_list), _read_id_list(test_list)
    split = None
    if train is not None or test is not None:
        split = ["train" if train and i in train else "test" if test and i in test else "unused" for i in ids]
    values = np.arange(1.0, 11.0)
    return LabelTable(
        [_join(image_root, f"{i}.jpg") for i in ids], dist @ values, dist, values, (1.0, 10.0),
        split=split, source=str(path), extra={"counts": counts_array, "where": [f"line {n}" for n in lines]},
    )


def _read_score_csv(path: Path, image_root, scale, image_column="image", score_column="score"):
    _, rows = _read_csv(path, [image_column, score_column])
    lines = [line for line, _ in rows]
    scores = np.array([_number(row[score_column], path, line, score_column) for line, row in rows], dtype=float)
    _check_scores(scores, scale, path, lines)
    return [_join(image_root, row[image_column]) for _, row in rows], scores, lines


def read_tad66k(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> LabelTable:
    """TAD66K: a merged CSV ``image,score`` (1..10), or a folder whose ``unmerge/``
    (or itself) holds the per-theme CSVs; the theme is the file's stem."""
    path, scale = Path(path), (1.0, 10.0)
    if path.is_dir():
        folder = path / "unmerge" if (path / "unmerge").is_dir() else path
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"labels: no theme CSV files in {folder}")
        images, scores, themes, where = [], [], [], []
        for file in files:
            names, values, lines = _read_score_csv(file, image_root, scale)
            images += names
            scores.append(values)
            themes += [file.stem] * len(names)
            where += [f"{file.name} line {n}" for n in lines]
        all_scores = np.concatenate(scores)
        return LabelTable(images, all_scores, None, _grid(scale), scale, theme=themes, source=str(folder),
                          extra={"where": where})
    images, scores, lines = _read_score_csv(path, image_root, scale)
    return LabelTable(images, scores, None, _grid(scale), scale, source=str(path),
                      extra={"where": [f"line {n}" for n in lines]})


def read_aadb(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> LabelTable:
    """AADB ``imgList{Train,Validation,Test,TestNew}Regression_score.txt`` (``<file> <score>``,
    score 0..1). A folder reads every such file and keeps the split."""
    path, scale = Path(path), (0.0, 1.0)
    files = sorted(path.glob("imgList*Regression_score.txt")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"labels: no AADB score files at {path}")
    images, scores, split, lines, where = [], [], [], [], []
    for file in files:
        name = file.name.replace("imgList", "").replace("Regression_score.txt", "").lower() or "all"
        for line_number, fields in _whitespace_rows(file, 2, "'<filename> <score>'"):
            images.append(_join(image_root, fields[0]))
            scores.append(_number(fields[1], file, line_number, "score"))
            split.append(name)
            lines.append(line_number)
            where.append(f"{file.name} line {line_number}")
    score_array = np.array(scores)
    _check_scores(score_array, scale, files[0], lines)
    return LabelTable(images, score_array, None, _grid(scale), scale, split=split, source=str(path),
                      extra={"where": where})


def read_para(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> LabelTable:
    """PARA GIAA CSVs (``PARA-GiaaTrain.csv`` / ``PARA-GiaaTest.csv``): 9 half-step bins on
    1..5; images at ``imgs/<sessionId>/<imageName>``. A folder reads both files."""
    path = Path(path)
    files = [path / "PARA-GiaaTrain.csv", path / "PARA-GiaaTest.csv"] if path.is_dir() else [path]
    files = [f for f in files if f.is_file()]
    if not files:
        raise FileNotFoundError(f"labels: no PARA GIAA files at {path}")
    root = image_root if image_root is not None else (path if path.is_dir() else path.parent) / "imgs"
    images, hist, split, lines, means = [], [], [], [], []
    for file in files:
        _, rows = _read_csv(file, ["imageName", "sessionId", "aestheticScore_mean", *PARA_BINS])
        name = "test" if "test" in file.stem.lower() else "train"
        for line, row in rows:
            images.append(str(Path(root) / row["sessionId"] / row["imageName"]))
            hist.append([_number(row[c], file, line, c) for c in PARA_BINS])
            means.append(_number(row["aestheticScore_mean"], file, line, "aestheticScore_mean"))
            split.append(name)
            lines.append(line)
    values = np.arange(1.0, 5.01, 0.5)
    dist = _counts_to_distribution(np.array(hist).reshape(-1, 9), files[0], lines)
    return LabelTable(
        images, dist @ values, dist, values, (1.0, 5.0), split=split, source=str(path),
        extra={"aestheticScore_mean": np.array(means)},
    )


def read_csv(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    image_column: str = "image",
    score_column: str | None = None,
    count_columns: Sequence[str] | None = None,
    scale: tuple[float, float] = (1.0, 10.0),
    bin_values: Sequence[float] | None = None,
    split_column: str | None = None,
) -> LabelTable:
    """Any CSV with an image column and either a score column or count/probability columns.

    Without ``score_column`` and ``count_columns``: a ``score`` column if present, else
    the numeric columns other than the image column are read as counts. Counts (or
    probabilities) are normalised per row.
    """
    path = Path(path)
    header, _ = _read_csv(path, [image_column])
    if score_column is None and count_columns is None:
        if "score" in header:
            score_column = "score"
        else:
            count_columns = [c for c in header if c not in (image_column, split_column)]
            if not count_columns:
                raise LabelFileError(f"{path}: line 1: no score column and no count columns next to {image_column!r}")
            if len(count_columns) == 1:  # one vote-count column would make every score the scale's lowest
                raise LabelFileError(f"{path}: line 1: one column next to {image_column!r}, {count_columns[0]!r}, and "
                                     f"no 'score' column; if {count_columns[0]!r} holds the scores, pass "
                                     f"--score-column {count_columns[0]} (score_column={count_columns[0]!r}), or "
                                     "name it 'score'; vote counts need one column per rating level")
    required = [image_column] + ([score_column] if score_column else list(count_columns)) + ([split_column] if split_column else [])
    _, rows = _read_csv(path, required)
    lines = [line for line, _ in rows]
    images = [_join(image_root, row[image_column]) for _, row in rows]
    split = [row[split_column] for _, row in rows] if split_column else None
    if score_column:
        scores = np.array([_number(row[score_column], path, line, score_column) for line, row in rows], dtype=float)
        _check_scores(scores, scale, path, lines)
        return LabelTable(images, scores, None, _grid(scale), scale, split=split, source=str(path),
                          extra={"where": [f"line {n}" for n in lines]})
    counts = np.array([[_number(row[c], path, line, c) for c in count_columns] for line, row in rows]).reshape(-1, len(count_columns))
    dist = _counts_to_distribution(counts, path, lines)
    values = np.asarray(bin_values, dtype=float) if bin_values is not None else np.linspace(scale[0], scale[1], len(count_columns))
    if len(values) != len(count_columns):
        raise ValueError(f"bin_values: expected {len(count_columns)} values (one per count column), got {len(values)}")
    return LabelTable(images, dist @ values, dist, values, scale, split=split, source=str(path),
                      extra={"where": [f"line {n}" for n in lines]})


def load_labels(path: str | os.PathLike, format: str, image_root: str | os.PathLike | None = None, **options) -> LabelTable:
    """Read a label file in one of :data:`FORMATS`."""
    readers = {
        "ava": read_ava_csv, "ava-txt": read_ava_txt, "tad66k": read_tad66k,
        "aadb": read_aadb, "para": read_para, "csv": read_csv,
    }
    if format not in readers:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    try:
        table = readers[format](path, image_root=image_root, **options)
    except LabelFileError as error:
        suggestion = suggest_format(path)
        if "missing column" in str(error) and suggestion not in (None, format):
            raise LabelFileError(f"{error}. This header looks like --format {suggestion}") from None
        raise
    if len(table) == 0:
        raise LabelFileError(f"{path}: no images: the file has no data rows")
    _check_unique_images(table)
    return table


def suggest_format(path: str | os.PathLike) -> str | None:
    """The format whose columns the first line of ``path`` has, if one does."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        first = _text(path).splitlines()[0] if path.stat().st_size else ""
    except (LabelFileError, IndexError):
        return None
    columns = [c.strip() for c in first.split(",")]
    if all(c in columns for c in ["image_id", *AVA_COUNT_COLUMNS]):
        return "ava"
    if all(c in columns for c in PARA_BINS):
        return "para"
    if "image" in columns and "score" in columns:
        return "tad66k"
    fields = first.split()
    if len(fields) == 15 and all(f.isdigit() for f in fields):
        return "ava-txt"
    if len(fields) == 2 and "," not in first:
        return "aadb"
    return "csv" if len(columns) > 1 else None


def _check_unique_images(table: LabelTable) -> None:
    """Refuse an image listed twice (it would be counted twice), naming it and both rows."""
    first: dict[str, int] = {}
    for row, image in enumerate(table.images):
        if image in first:
            where = table.extra.get("where")
            a, b = (where[first[image]], where[row]) if where else (f"row {first[image] + 1}", f"row {row + 1}")
            raise LabelFileError(f"{table.source}: image {image!r} is listed twice ({a} and {b}); "
                                 "remove the duplicate")
        first[image] = row
