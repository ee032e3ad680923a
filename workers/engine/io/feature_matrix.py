"""Feature columns read straight into one contiguous array in the model's dtype.

Parquet is read record batch by record batch (pyarrow, only the feature columns); each batch's
columns are written into their place of one preallocated n × d array, so the features exist
once, in the dtype the model computes in (float32 for a float32 checkpoint: 2 GB at 1 M × 512,
where a pandas round trip and a float64 copy held 4 such copies). CSV goes through pandas in
chunks of rows and is stacked once at the end (two copies at the peak, documented in
SERVICE.md's memory model). Finiteness is checked batch by batch.

With a :class:`RowTransform` (the model's extractor, for a head-scope job that never needs the
inputs again) each batch is transformed as it is read and only the transformed rows are kept:
the inputs are never held whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.engine.errors import DatasetError

__all__ = ["BATCH_ROWS", "RowTransform", "check_finite_rows", "feature_dtype", "numpy_values",
           "read_csv_features", "read_parquet_features", "transform_rows"]

BATCH_ROWS = 65_536
"""Rows per record batch or CSV chunk (at 512 float64 columns, 268 MB of decoded values)."""


class RowTransform(Protocol):
    """Maps a block of rows (inputs, in the model's dtype) to the rows that are kept."""

    @property
    def width(self) -> int:
        """Columns of a transformed row."""

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """The transformed rows of ``block`` (same number of rows, ``width`` columns)."""


def transform_rows(values: np.ndarray, transform: RowTransform) -> np.ndarray:
    """``transform`` applied block by block to rows already read (CSV, and tensor dtypes that
    are not read in blocks): the inputs are held whole while this runs, but not afterwards."""
    out = np.empty((values.shape[0], transform.width), dtype=values.dtype)
    for start in range(0, values.shape[0], BATCH_ROWS):
        out[start:start + BATCH_ROWS] = transform(values[start:start + BATCH_ROWS])
    return out


def feature_dtype(dtype: np.dtype | type | None) -> np.dtype:
    """The array dtype for a model computing in ``dtype``: float32 and float64 as they are;
    narrower floats (float16, bfloat16 by name) are held as float32; None means float64."""
    if dtype is None:
        return np.dtype(np.float64)
    resolved = np.dtype(dtype)
    return resolved if resolved in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)


def check_finite_rows(values: np.ndarray, names: Sequence[str], dataset: str) -> None:
    """Refuse NaN or Inf, naming (up to ten of) the offending columns.

    Raises:
        DatasetError: with the columns to impute or drop.
    """
    finite = np.isfinite(values)
    if finite.all():
        return
    flat = finite.reshape(finite.shape[0], -1) if finite.ndim > 1 else finite.reshape(-1, 1)
    cols = sorted({names[j] if j < len(names) else str(j) for j in np.nonzero(~flat)[1][:1000]})
    raise DatasetError(f"{dataset}: NaN or Inf in feature column(s) {cols[:10]}; impute or drop those rows")


def numpy_values(array: pa.Array) -> np.ndarray:
    """A null-free Arrow array as numpy values, integers and floats without a copy (read-only).

    Not ``Array.to_numpy``: it sets up pyarrow's pandas support first, importing pandas (about
    half a second). Booleans are unpacked from their bits; other types (decimals) do go through
    ``to_numpy``.
    """
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return np.from_dlpack(array)
    if pa.types.is_boolean(kind):
        if len(array) == 0:
            return np.zeros(0, dtype=bool)
        bits = np.unpackbits(np.frombuffer(array.buffers()[1], dtype=np.uint8),
                             count=array.offset + len(array), bitorder="little")
        return bits[array.offset:].astype(bool)
    return cast(np.ndarray, array.to_numpy(zero_copy_only=False))


def _numeric(field: pa.Field) -> bool:
    kind = field.type
    if pa.types.is_dictionary(kind):
        return False
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_decimal(kind))


def _refuse_non_numeric(bad: list[str], dataset: str) -> None:
    if bad:
        raise DatasetError(f"{dataset}: feature column(s) {bad[:10]} are not numeric; encode them "
                           "(e.g. one-hot) or leave them out with schema.features")


COLUMN_GROUP = 64
"""Columns a record batch's values are stacked by before they go into the row-major block:
writing one column at a time strides through every row (0.81 s for 100 k × 512 float32, against
0.25 s in groups of 64)."""


READ_BYTES = 64 * 2**20
"""Decoded float64 values one Parquet read may hold: a row group's columns are read this many bytes
at a time. pyarrow decodes a whole row group per read, and reading all 512 columns of a 100 k-row
group at once peaked at 1.37 GB of RSS for 205 MB of float32 values; 64 columns at a time, 0.24 GB."""


def _fill_rows(block: np.ndarray, data: pa.RecordBatch | pa.Table, names: list[str], dataset: str) -> None:
    """Copy the ``names`` columns of ``data`` into ``block`` (rows × len(names)).

    Raises:
        DatasetError: a column holds nulls.
    """
    for first in range(0, len(names), COLUMN_GROUP):
        group = names[first:first + COLUMN_GROUP]
        columns = [data.column(name) for name in group]
        nulls = [name for name, column in zip(group, columns, strict=True) if column.null_count]
        if nulls:
            raise DatasetError(f"{dataset}: NaN or Inf in feature column(s) {nulls[:1]}; impute or drop "
                               "those rows")
        values = [numpy_values(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
                  for column in columns]
        block[:, first:first + len(group)] = np.stack(values, axis=1)


def _read_by_column_groups(handle: pq.ParquetFile, names: list[str], out: np.ndarray, dataset: str) -> int:
    """Fill ``out`` row group by row group, each in reads of at most :data:`READ_BYTES`; returns
    the rows read.

    Raises:
        DatasetError: a column holds nulls, NaN or Inf.
    """
    start = 0
    for group in range(handle.metadata.num_row_groups):
        rows = int(handle.metadata.row_group(group).num_rows)
        step = max(1, READ_BYTES // max(1, rows * 8))
        if start + rows > out.shape[0]:
            return start + rows
        for first in range(0, len(names), step):
            subset = names[first:first + step]
            table = handle.read_row_group(group, columns=subset, use_threads=False)
            _fill_rows(out[start:start + rows, first:first + len(subset)], table, subset, dataset)
        start += rows
    for first in range(0, start, BATCH_ROWS):
        check_finite_rows(out[first:first + BATCH_ROWS], names, dataset)
    return start


def _read_transformed(handle: pq.ParquetFile, names: list[str], out: np.ndarray, transform: RowTransform,
                      dataset: str) -> int:
    """Fill ``out`` with ``transform`` of every record batch of the ``names`` columns (the
    transform needs whole rows); returns the rows read.

    Raises:
        DatasetError: a column holds nulls, NaN or Inf.
    """
    scratch = np.empty((min(out.shape[0], BATCH_ROWS), len(names)), dtype=out.dtype)
    start = 0
    for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=names, use_threads=False):
        stop = start + int(batch.num_rows)
        if stop > out.shape[0]:
            return stop
        block = scratch[:batch.num_rows]
        _fill_rows(block, batch, names, dataset)
        check_finite_rows(block, names, dataset)
        out[start:stop] = transform(block)
        start = stop
    return start


def read_parquet_features(path: Path, names: list[str], dtype: np.dtype, dataset: str,
                          transform: RowTransform | None = None) -> np.ndarray:
    """The ``names`` columns of a Parquet file as one C-contiguous [n, len(names)] array, or
    with ``transform`` the [n, transform.width] array of the transformed batches.

    Raises:
        DatasetError: a column is not numeric, or holds NaN/Inf/null.
    """
    handle = pq.ParquetFile(path)
    schema = handle.schema_arrow
    _refuse_non_numeric([c for c in names if not _numeric(schema.field(c))], dataset)
    rows = handle.metadata.num_rows
    out = np.empty((rows, len(names) if transform is None else transform.width), dtype=dtype)
    if transform is None:
        start = _read_by_column_groups(handle, names, out, dataset)
    else:
        start = _read_transformed(handle, names, out, transform, dataset)
    if start != rows:
        raise DatasetError(f"{dataset}: the Parquet footer promises {rows} rows but {start} were read")
    return out


def read_csv_features(path: Path, names: list[str], dtype: np.dtype, dataset: str,
                      transform: RowTransform | None = None) -> np.ndarray:
    """The ``names`` columns of a CSV file as one [n, len(names)] array, read in row chunks
    (with ``transform``: each chunk transformed as it is read).

    Raises:
        DatasetError: a column is not numeric, or holds NaN/Inf/empty cells.
    """
    import pandas as pd  # only CSV needs it, and it takes a second to import

    parts: list[np.ndarray] = []
    reader = pd.read_csv(path, usecols=names, chunksize=BATCH_ROWS, low_memory=False)
    for chunk in reader:
        _refuse_non_numeric([c for c in names if not (pd.api.types.is_numeric_dtype(chunk[c])
                                                      and not pd.api.types.is_complex_dtype(chunk[c]))],
                            dataset)
        values = chunk[names].to_numpy(dtype=dtype, na_value=np.nan)
        check_finite_rows(values, names, dataset)
        parts.append(values if transform is None else transform(values))
    if not parts:
        return np.empty((0, len(names) if transform is None else transform.width), dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
