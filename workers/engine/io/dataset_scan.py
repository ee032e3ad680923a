"""Validating a dataset a chunk at a time, with memory bounded whatever its size (no torch).

The HTTP front end must not hold a whole dataset: :func:`scan_dataset` checks the caps from the
metadata first (:mod:`workers.engine.io.dataset_limits`), then reads only the columns the schema
uses, :data:`CHUNK_BYTES` of float64 cells at a time (Parquet record batches, CSV chunks, or
row ranges of a tensor dataset's memory-mapped arrays), and applies to each chunk the same checks
as :func:`workers.engine.io.datasets.load_dataset`. At any moment it holds one chunk's decoded
columns, their float64 copy, and the distinct values of each sensitive column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from workers.engine.errors import DatasetError
from workers.engine.io.dataset_limits import (
    CELL_BYTES,
    DatasetLimits,
    DatasetSize,
    check_size,
    measure_dataset,
    needed_columns,
    parquet_columns,
)
from workers.engine.io.datasets import (
    PARQUET_MAGIC,
    DatasetSchema,
    _binary_labels,
    _groups,
    _numeric_features,
    read_columns,
    resolve_features,
)
from workers.engine.io.safetensors_data import data_start, iter_rows, read_rows
from workers.engine.io.safetensors_header import TensorInfo
from workers.engine.io.tensor_datasets import (
    FEATURES_TENSOR,
    _feature_names,
    _finite,
    _header,
    is_tensor_dataset,
)
from workers.engine.io.tensor_datasets import _groups as _tensor_groups

__all__ = ["CHUNK_BYTES", "DatasetSummary", "scan_dataset"]

CHUNK_BYTES = 16 * 1024 * 1024
"""Float64 bytes of one chunk (rows per chunk = this / (8 × columns read), at least 1)."""


@dataclass(frozen=True)
class DatasetSummary:
    """What a valid dataset holds: its columns, features, rows and each sensitive column's groups."""

    columns: list[str]
    feature_names: list[str]
    n_rows: int
    groups: dict[str, list[str]]


def _parquet_passes(path: Path, used: list[str], chunk_bytes: int) -> list[list[str]]:
    """The used columns split into passes whose decompressed pages fit ``chunk_bytes`` together.

    A column reader holds one decompressed page, and a page's size is not in the footer; a column
    chunk's uncompressed size bounds it. Reading a few columns at a time through all rows bounds
    the pages held at once, where one pass over every column would hold a page per column.
    """
    meta = pq.ParquetFile(path).metadata
    largest: dict[str, int] = {}
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            top = chunk.path_in_schema.split(".")[0]
            key = chunk.path_in_schema if chunk.path_in_schema in used else top
            largest[key] = max(largest.get(key, 0), chunk.total_uncompressed_size)
    passes: list[list[str]] = [[]]
    held = 0
    for column in used:
        size = largest.get(column, 0)
        if passes[-1] and held + size > chunk_bytes:
            passes.append([])
            held = 0
        passes[-1].append(column)
        held += size
    return passes


def _frame_chunks(path: Path, parquet: bool, used: list[str], size: DatasetSize,
                  chunk_bytes: int) -> Iterator[pd.DataFrame]:
    """Chunks of the used columns: for Parquet, pass after pass over a few columns; for CSV, rows
    of every used column, as many as fit ``chunk_bytes`` of tokens and of raw line text."""
    if parquet:
        file = pq.ParquetFile(path, pre_buffer=False)
        for columns in _parquet_passes(path, used, chunk_bytes):
            rows = max(1, chunk_bytes // (CELL_BYTES * len(columns)))
            for batch in file.iter_batches(batch_size=rows, columns=columns, use_pandas_metadata=False):
                yield batch.to_pandas()
        return
    rows = max(1, min(chunk_bytes // (2 * CELL_BYTES * max(size.columns, 1)),
                      chunk_bytes // max(size.row_bytes, 1)))
    with pd.read_csv(path, usecols=used, chunksize=rows) as reader:
        yield from reader


class _FrameChecks:
    """The checks of ``load_dataset`` on a tabular dataset, one chunk at a time."""

    def __init__(self, schema: DatasetSchema, features: list[str], name: str) -> None:
        self.schema, self.features, self.name = schema, features, name
        self.rows = 0
        self.uniques: dict[str, list[np.ndarray]] = {c: [] for c in schema.sensitive}
        self.bools: dict[str, set[bool]] = {}

    def _same_kind(self, chunk: pd.DataFrame, names: list[str]) -> None:
        # A CSV column read whole is of one dtype; read in chunks, true/false in one chunk and numbers
        # in another would each pass where the whole column (object dtype) would not.
        for column in names:
            seen = self.bools.setdefault(column, set())
            seen.add(bool(pd.api.types.is_bool_dtype(chunk[column])))
            if len(seen) > 1:
                raise DatasetError(f"{self.name}: column {column!r} mixes true/false with numbers; use 0/1")

    def add(self, chunk: pd.DataFrame) -> None:
        """Check the columns this chunk holds (some or all of the used ones)."""
        if len(chunk) == 0:  # a header-only CSV reads as one empty chunk of strings
            return
        if self.schema.label in chunk:  # every pass covers all rows; count them in the label's
            self.rows += len(chunk)
        present = set(chunk.columns)
        reference = [c for c in (self.schema.reference_logits,) if c is not None and c in present]
        features = [c for c in self.features if c in present]
        label = [self.schema.label] if self.schema.label in present else []
        self._same_kind(chunk, [*label, *features, *reference])
        for column in self.schema.sensitive:
            if column not in present:
                continue
            if chunk[column].isna().any():
                raise DatasetError(f"{self.name}: sensitive column {column!r} has missing values")
            self.uniques[column].append(np.asarray(pd.unique(chunk[column])))
        if reference:
            _numeric_features(chunk, reference, self.name)
        if features:
            _numeric_features(chunk, features, self.name)
        if label:
            _binary_labels(chunk[self.schema.label], self.name)

    def groups(self) -> dict[str, list[str]]:
        out = {}
        for column, parts in self.uniques.items():
            values = pd.Series(np.concatenate(parts) if parts else [], name=column)
            out[column] = sorted(set(_groups(pd.Series(pd.unique(values), name=column), self.name)))
        return out


def _scan_frame(path: Path, schema: DatasetSchema, name: str, size: DatasetSize,
                chunk_bytes: int) -> DatasetSummary:
    with open(path, "rb") as handle:
        parquet = handle.read(4) == PARQUET_MAGIC
    names = parquet_columns(path) if parquet else read_columns(path)
    features = resolve_features(names, schema)
    if not features:
        raise DatasetError(f"{name}: no feature columns left after the label and sensitive ones")
    used = needed_columns(names, schema)
    checks = _FrameChecks(schema, features, name)
    try:
        for chunk in _frame_chunks(path, parquet, used, size, chunk_bytes):
            checks.add(chunk)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{name} is neither a readable Parquet file nor a CSV with a header row: "
                           f"{exc}") from exc
    if checks.rows == 0:
        raise DatasetError(f"{name}: the file has no rows")
    return DatasetSummary(columns=read_columns(path), feature_names=features, n_rows=checks.rows,
                          groups=checks.groups())


def _vector_info(tensors: dict[str, TensorInfo], key: str, n: int, path: Path) -> TensorInfo:
    if key not in tensors:
        raise DatasetError(f"{path.name}: no tensor named {key!r}; it has {sorted(tensors)[:10]}")
    if tensors[key].shape != (n,):
        raise DatasetError(f"{path.name}: tensor {key!r} must have shape [{n}] (one value per row of "
                           f"{FEATURES_TENSOR!r}); it has {list(tensors[key].shape)}")
    return tensors[key]


def _scan_tensor(path: Path, schema: DatasetSchema, chunk_bytes: int) -> DatasetSummary:
    """The checks of ``read_tensor_dataset``, reading each tensor in row ranges."""
    tensors, described = _header(path)
    x = tensors[FEATURES_TENSOR]
    names = _feature_names(path, x, described)
    columns = [*names, *(k for k, v in tensors.items() if k != FEATURES_TENSOR and len(v.shape) == 1)]
    features = resolve_features(columns, schema)
    n, start = x.shape[0], data_start(path)
    if n == 0:
        raise DatasetError(f"{path.name}: the file has no rows")
    chosen = None
    if len(x.shape) == 2 and features != names:
        missing = [c for c in features if c not in names]
        if missing:
            raise DatasetError(f"{path.name}: feature(s) {missing[:10]} are not among x's feature_names")
        chosen, names = [names.index(c) for c in features], features
    label = _vector_info(tensors, schema.label, n, path)
    for lo, hi in iter_rows(label, chunk_bytes):
        y = _finite(read_rows(path, start, label, lo, hi), f"label tensor {schema.label!r}", path)
        if not np.isin(y, (0.0, 1.0)).all():
            raise DatasetError(f"{path.name}: label tensor {schema.label!r} must hold only 0 and 1")
    if schema.reference_logits is not None:
        reference = _vector_info(tensors, schema.reference_logits, n, path)
        for lo, hi in iter_rows(reference, chunk_bytes):
            _finite(read_rows(path, start, reference, lo, hi), f"tensor {schema.reference_logits!r}", path)
    groups: dict[str, list[str]] = {}
    for attribute in schema.sensitive:
        info = _vector_info(tensors, attribute, n, path)
        seen: set[str] = set()
        for lo, hi in iter_rows(info, chunk_bytes):
            codes = np.unique(read_rows(path, start, info, lo, hi))
            seen.update(map(str, _tensor_groups(codes, attribute, described, path)))
        groups[attribute] = sorted(seen)
    for lo, hi in iter_rows(x, chunk_bytes // 2):
        block = read_rows(path, start, x, lo, hi)
        _finite(block if chosen is None else block[:, chosen], f"tensor {FEATURES_TENSOR!r}", path)
    return DatasetSummary(columns=columns, feature_names=names, n_rows=n, groups=groups)


def scan_dataset(path: str | Path, schema: DatasetSchema, name: str = "dataset",
                 limits: DatasetLimits | None = None, chunk_bytes: int = CHUNK_BYTES) -> DatasetSummary:
    """Validate a Parquet, CSV or tensor dataset as ``load_dataset`` would, without holding it:
    the caps first (from metadata, nothing decoded), then one chunk of the used columns at a time.

    Raises:
        DatasetTooLarge: over a cap of ``limits`` (default :class:`DatasetLimits`).
        DatasetError: what is wrong and how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path.name}")
    limits = limits or DatasetLimits()
    size = measure_dataset(path, schema, limits)
    check_size(size, limits)
    if is_tensor_dataset(path):
        return _scan_tensor(path, schema, chunk_bytes)
    return _scan_frame(path, schema, name, size, chunk_bytes)
