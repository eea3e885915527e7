"""Datasets: label files of AVA, TAD66K, AADB, PARA and any CSV, a built-in synthetic
long-tailed aesthetics dataset, and the long-tail summary behind ``elta stats``.
NumPy and the standard library only; framework datasets live in the adapters."""

from elta_core.data.labels import (
    FORMATS,
    LabelFileError,
    LabelTable,
    load_labels,
    read_aadb,
    read_ava_csv,
    read_ava_txt,
    read_csv,
    read_para,
    read_tad66k,
)
from elta_core.data.stats import FIGURE1_BINS, long_tail_summary

__all__ = [
    "FIGURE1_BINS",
    "FORMATS",
    "LabelFileError",
    "LabelTable",
    "load_labels",
    "long_tail_summary",
    "read_aadb",
    "read_ava_csv",
    "read_ava_txt",
    "read_csv",
    "read_para",
    "read_tad66k",
]
