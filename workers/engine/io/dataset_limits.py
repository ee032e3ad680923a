"""How big a dataset is, measured before any value is decoded, and the operator's caps on it.

A few hundred kilobytes of Parquet can describe fifty million rows, and a one-megabyte CSV a
hundred thousand columns; decoding first and counting afterwards lets such a file take the
process's memory and minutes of CPU. So the size is read from what costs nothing to read: the
Parquet footer (row counts, column count, per-column-chunk byte sizes), the CSV header line (read
alone, at most :data:`MAX_CSV_LINE_BYTES`) and a streamed count of its newlines, the safetensors
header's shapes. The decoded estimate is what the engine's full load allocates: 8 bytes per cell
(a float64 or an object pointer) of every column the schema uses, plus, for string columns, their
uncompressed bytes and :data:`STRING_CELL_BYTES` per cell of Python ``str`` overhead.
"""

from __future__ import annotations

import csv
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from workers.engine.errors import DatasetError
from workers.engine.io.datasets import PARQUET_MAGIC, DatasetSchema, read_columns, resolve_features
from workers.engine.io.safetensors_header import read_header_and_metadata
from workers.engine.io.tensor_datasets import (
    DATASET_DTYPES,
    FEATURES_TENSOR,
    is_tensor_dataset,
    tensor_columns,
)

__all__ = ["DatasetLimits", "DatasetSize", "DatasetTooLarge", "check_size", "measure_dataset",
           "needed_columns", "parquet_columns"]

GiB = 1024**3
MAX_CSV_LINE_BYTES = 1024 * 1024
"""Longest CSV line (the header included) accepted; 10,000 columns of 17-digit numbers fit."""
MAX_PARQUET_FOOTER_BYTES = 32 * 1024 * 1024
"""Largest Parquet footer (metadata) parsed."""
CELL_BYTES = 8
STRING_CELL_BYTES = 64
_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class DatasetLimits:
    """Caps on a dataset (the settings ``SOFTUNLEARN_MAX_DATASET_ROWS``, ``..._COLUMNS`` and
    ``..._DECODED_BYTES``)."""

    max_dataset_rows: int = 20_000_000
    max_dataset_columns: int = 10_000
    max_dataset_decoded_bytes: int = 8 * GiB


@dataclass(frozen=True)
class DatasetSize:
    """What a dataset holds, as its metadata says: rows, columns, estimated decoded bytes of the
    columns the schema uses."""

    rows: int
    columns: int
    decoded_bytes: int
    row_bytes: int = 0
    """Most stored bytes of one row where the format has rows (a CSV's longest line), else 0."""


class DatasetTooLarge(DatasetError):
    """A dataset over a cap; the message names the cap, its setting and the measured value."""

    code = "dataset_too_large"

    def __init__(self, what: str, measured: int, limit: int, setting: str | None) -> None:
        where = (f" (setting SOFTUNLEARN_{setting.upper()}; the operator may raise it)" if setting
                 else "")
        super().__init__(f"the dataset has {measured:,} {what}; at most {limit:,} are accepted{where}. "
                         "Nothing was decoded; split the dataset or leave out unused columns")
        self.what, self.measured, self.limit, self.setting = what, measured, limit, setting


def check_size(size: DatasetSize, limits: DatasetLimits) -> None:
    """Refuse a dataset over one of ``limits``.

    Raises:
        DatasetTooLarge: naming the first cap exceeded.
    """
    for what, measured, field in (("columns", size.columns, "max_dataset_columns"),
                                  ("rows", size.rows, "max_dataset_rows"),
                                  ("bytes once decoded (estimated)", size.decoded_bytes,
                                   "max_dataset_decoded_bytes")):
        limit = getattr(limits, field)
        if measured > limit:
            raise DatasetTooLarge(what, measured, limit, field)


def needed_columns(columns: list[str], schema: DatasetSchema) -> list[str]:
    """The columns a load reads: label, sensitive, features and the reference logits."""
    features = resolve_features(columns, schema)
    wanted = [schema.label, *schema.sensitive, *features,
              *((schema.reference_logits,) if schema.reference_logits else ())]
    return list(dict.fromkeys(wanted))


def _parquet_footer_size(path: Path) -> int:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        total = handle.tell()
        if total < 12:
            raise DatasetError("the Parquet file is truncated (no footer)")
        handle.seek(total - 8)
        tail = handle.read(8)
    if tail[4:] != PARQUET_MAGIC:
        raise DatasetError("the Parquet file is truncated or corrupt (no footer magic)")
    return int(struct.unpack("<I", tail[:4])[0])


def _parquet_size(path: Path, schema: DatasetSchema, limits: DatasetLimits) -> DatasetSize:
    footer = _parquet_footer_size(path)
    if footer > MAX_PARQUET_FOOTER_BYTES:
        raise DatasetTooLarge("bytes of Parquet metadata", footer, MAX_PARQUET_FOOTER_BYTES, None)
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, ValueError) as exc:
        raise DatasetError(f"not a readable Parquet file: {exc}") from exc
    rows = max(meta.num_rows, sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups)))
    check_size(DatasetSize(rows=rows, columns=meta.num_columns, decoded_bytes=0), limits)
    used = set(needed_columns(parquet_columns(path), schema))
    decoded = 0
    for j in range(meta.num_columns):
        column = meta.schema.column(j)
        top = column.path if column.path in used else column.path.split(".")[0]
        if top not in used:
            continue
        if column.max_repetition_level > 0:
            raise DatasetError(f"column {top!r} is nested (a list or a map); the label, sensitive and "
                               "feature columns must hold one value per row")
        decoded += rows * CELL_BYTES
        if column.physical_type in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"):
            decoded += rows * STRING_CELL_BYTES + sum(
                meta.row_group(i).column(j).total_uncompressed_size for i in range(meta.num_row_groups))
    return DatasetSize(rows=rows, columns=meta.num_columns, decoded_bytes=decoded)


def parquet_columns(path: str | Path) -> list[str]:
    """Top-level column names as ``to_pandas`` shows them (pandas' stored index columns left out)."""
    arrow = pq.read_schema(path)
    index = (arrow.pandas_metadata or {}).get("index_columns", [])
    return [n for n in arrow.names if n not in {c for c in index if isinstance(c, str)}]


def _csv_header(path: Path, limits: DatasetLimits) -> int:
    with open(path, "rb") as handle:
        line = handle.readline(MAX_CSV_LINE_BYTES + 1)
    if len(line) > MAX_CSV_LINE_BYTES:
        raise DatasetTooLarge("bytes in its header line (or more)", len(line), MAX_CSV_LINE_BYTES, None)
    try:
        names = next(csv.reader([line.decode("utf-8-sig")]), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"the CSV header line is not readable UTF-8 CSV: {exc}") from exc
    if len(names) > limits.max_dataset_columns:
        raise DatasetTooLarge("columns", len(names), limits.max_dataset_columns, "max_dataset_columns")
    return len(names)


def _csv_lines(path: Path) -> tuple[int, int]:
    """Newline-separated lines of the file and the longest one's length, streamed."""
    lines = longest = 0
    current = 0
    ends_with_newline = True
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            stops = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            if stops.size == 0:
                current += len(block)
            else:
                longest = max(longest, current + int(stops[0]) + 1,
                              int(np.diff(stops).max()) if stops.size > 1 else 0)
                current = len(block) - int(stops[-1]) - 1
            lines += int(stops.size)
            ends_with_newline = block.endswith(b"\n")
    if not ends_with_newline:
        lines += 1
    return lines, max(longest, current)


def _csv_size(path: Path, schema: DatasetSchema, limits: DatasetLimits) -> DatasetSize:
    width = _csv_header(path, limits)
    lines, longest = _csv_lines(path)
    if longest > MAX_CSV_LINE_BYTES:
        raise DatasetTooLarge("bytes in its longest line", longest, MAX_CSV_LINE_BYTES, None)
    rows = max(0, lines - 1)  # an upper bound: blank lines and quoted newlines count too
    check_size(DatasetSize(rows=rows, columns=width, decoded_bytes=0), limits)
    used = needed_columns(read_columns(path), schema)
    return DatasetSize(rows=rows, columns=width, decoded_bytes=rows * len(used) * CELL_BYTES,
                       row_bytes=longest)


def _tensor_size(path: Path) -> DatasetSize:
    columns = tensor_columns(path)  # validates the header, x's shape and its feature names
    tensors, _ = read_header_and_metadata(path, path.name, DATASET_DTYPES)
    x = tensors[FEATURES_TENSOR]
    rows = x.shape[0]
    cells = 1
    for dim in x.shape[1:]:
        cells *= dim
    vectors = sum(1 for key, info in tensors.items() if key != FEATURES_TENSOR and len(info.shape) == 1)
    return DatasetSize(rows=rows, columns=len(columns),
                       decoded_bytes=rows * (cells + vectors) * CELL_BYTES)


def measure_dataset(path: str | Path, schema: DatasetSchema, limits: DatasetLimits) -> DatasetSize:
    """Rows, columns and the estimated decoded size of a Parquet, CSV or tensor dataset, read from
    its metadata, header or line count without decoding values. A cap that can be checked early
    (the column count from a CSV header, the rows of a Parquet footer) is checked as soon as it
    is known.

    Raises:
        DatasetTooLarge: a cap is exceeded on the way.
        DatasetError: the metadata is unreadable, or a column the schema names is missing.
    """
    path = Path(path)
    if is_tensor_dataset(path):
        return _tensor_size(path)
    with open(path, "rb") as handle:
        parquet = handle.read(4) == PARQUET_MAGIC
    return _parquet_size(path, schema, limits) if parquet else _csv_size(path, schema, limits)
