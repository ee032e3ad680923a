"""Tabular datasets: Parquet or CSV plus a schema naming the label and sensitive columns.

No torch here: the HTTP front end uses the same validation at upload time. Features must be
model-ready numbers; the label must be 0/1; sensitive columns may hold any values (each distinct
value is a group) and are not features unless the schema lists them in ``features``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.engine.errors import DatasetError
from workers.engine.io.feature_matrix import (
    RowTransform,
    feature_dtype,
    numpy_values,
    read_csv_features,
    read_parquet_features,
)
from workers.engine.io.json_input import load_json
from workers.engine.io.tensor_datasets import is_tensor_dataset, read_tensor_dataset, tensor_columns

if TYPE_CHECKING:
    import pandas as pd
# pandas is imported where a CSV or an unusual Parquet column is read (about a second): tensor
# datasets and plain Parquet columns never need it.

__all__ = [
    "Dataset",
    "DatasetSchema",
    "check_groups_present",
    "load_dataset",
    "load_schema",
    "parse_schema",
    "read_columns",
    "read_frame",
    "resolve_features",
]

PARQUET_MAGIC = b"PAR1"
REFERENCE_COLUMN = "reference_logits"
"""A column of this name holds reference logits when the schema names no other; never a default
feature."""
MAX_COLUMNS = 100_000


@dataclass(frozen=True)
class DatasetSchema:
    """Which columns are the label, the sensitive attributes and the features."""

    label: str
    sensitive: tuple[str, ...]
    features: tuple[str, ...] | None = None
    reference_logits: str | None = None
    """A column holding the user's own model's logits; the rebuilt model must reproduce them."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``features`` and ``reference_logits`` omitted when unset)."""
        out: dict[str, Any] = {"label": self.label, "sensitive": list(self.sensitive)}
        if self.features is not None:
            out["features"] = list(self.features)
        if self.reference_logits is not None:
            out["reference_logits"] = self.reference_logits
        return out

    def excluded(self) -> set[str]:
        """Columns that are never default features (a column named ``reference_logits`` included)."""
        return {self.label, *self.sensitive, self.reference_logits or REFERENCE_COLUMN}


@dataclass(frozen=True)
class Dataset:
    """A validated dataset: features in one contiguous array of the model's dtype (float32 or
    float64), 0/1 labels (float64), sensitive group labels as strings."""

    name: str
    feature_names: tuple[str, ...]
    features: np.ndarray
    labels: np.ndarray
    sensitive: dict[str, np.ndarray]
    reference_logits: np.ndarray | None = None
    """The user's model's logits per row (schema ``reference_logits``), float64."""
    reference_column: str | None = None
    embedded: bool = False
    """``features`` hold the head features φ(x) of the model's extractor, computed while the
    file was read (:class:`~workers.engine.io.feature_matrix.RowTransform`), not the inputs."""

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.labels.shape[0])


def _names(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise DatasetError(f"schema: {field} must be a non-empty list of column names")
    if len(set(value)) != len(value):
        raise DatasetError(f"schema: {field} lists a column twice")
    return tuple(value)


def parse_schema(data: Any) -> DatasetSchema:
    """Validate a schema object ``{"label": ..., "sensitive": [...], "features": [...]?}``."""
    if not isinstance(data, dict):
        raise DatasetError('schema must be a JSON object like {"label": "y", "sensitive": ["sex"]}')
    unknown = sorted(set(data) - {"label", "sensitive", "features", "reference_logits"})
    if unknown:
        raise DatasetError(f"schema: unknown field(s) {', '.join(unknown)}")
    label = data.get("label")
    if not isinstance(label, str) or not label:
        raise DatasetError("schema: label must name a column")
    sensitive = _names(data.get("sensitive"), "sensitive")
    if label in sensitive:
        raise DatasetError(f"schema: column {label!r} cannot be both the label and sensitive")
    features = data.get("features")
    parsed_features = None if features is None else _names(features, "features")
    if parsed_features is not None and label in parsed_features:
        raise DatasetError(f"schema: the label {label!r} cannot also be a feature")
    reference = data.get("reference_logits")
    if reference is not None and (not isinstance(reference, str) or not reference):
        raise DatasetError("schema: reference_logits must name a column")
    if reference is not None and (reference in (label, *sensitive) or reference in (parsed_features or ())):
        raise DatasetError(f"schema: reference_logits column {reference!r} cannot also be the label, a "
                           "sensitive column or a feature")
    return DatasetSchema(label=label, sensitive=sensitive, features=parsed_features,
                         reference_logits=reference)


def load_schema(path: str | Path) -> DatasetSchema:
    """Read and validate a schema JSON file."""
    try:
        raw = load_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"schema file not found: {path}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"schema file {path} is not valid JSON: {exc}") from exc
    return parse_schema(raw)


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a Parquet file (recognized by its magic bytes) or a CSV file with a header row."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    try:
        if _is_parquet(path):
            return cast(pd.DataFrame, pq.read_table(path).to_pandas())
        return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path.name} is neither a readable Parquet file nor a CSV with a "
                           f"header row: {exc}") from exc


def read_columns(path: str | Path) -> list[str]:
    """Column names of a Parquet or CSV file (a tensor dataset's feature names and vectors),
    reading as little as possible."""
    path = Path(path)
    if path.is_file() and is_tensor_dataset(path):
        return tensor_columns(path)
    try:
        if _is_parquet(path):
            return list(pq.read_schema(path).names)
        import pandas as pd

        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError is a ValueError
        raise DatasetError(f"{path.name} is neither a readable Parquet file nor a CSV with a "
                           f"header row: {exc}") from exc


def resolve_features(columns: list[str], schema: DatasetSchema) -> list[str]:
    """The feature columns: the schema's list, or every column but label and sensitive ones.

    Raises:
        DatasetError: a named column is missing (the message lists what the file has).
    """
    if len(columns) > MAX_COLUMNS:
        raise DatasetError(f"dataset has {len(columns)} columns; at most {MAX_COLUMNS} allowed")
    if len(set(columns)) != len(columns):
        raise DatasetError("dataset has duplicate column names")
    wanted = [schema.label, *schema.sensitive, *(schema.features or ()),
              *((schema.reference_logits,) if schema.reference_logits else ())]
    missing = [c for c in wanted if c not in columns]
    if missing:
        shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
        raise DatasetError(f"column(s) {missing} not in the dataset; it has: {shown}")
    if schema.features is not None:
        return list(schema.features)
    excluded = schema.excluded()
    return [c for c in columns if c not in excluded]


def _numeric_features(frame: pd.DataFrame, names: list[str], dataset: str) -> np.ndarray:
    import pandas as pd

    bad = [c for c in names if not (pd.api.types.is_numeric_dtype(frame[c])
                                    and not pd.api.types.is_complex_dtype(frame[c]))]
    if bad:
        raise DatasetError(f"{dataset}: feature column(s) {bad[:10]} are not numeric; encode them "
                           "(e.g. one-hot) or leave them out with schema.features")
    values = np.array(frame[names].to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
    finite = np.isfinite(values)
    if not finite.all():
        cols = sorted({names[j] for j in np.nonzero(~finite)[1][:1000]})
        raise DatasetError(f"{dataset}: NaN or Inf in feature column(s) {cols[:10]}; impute or drop "
                           "those rows")
    return values


def _binary_labels(series: pd.Series, dataset: str) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return np.array(series.to_numpy(dtype=np.float64), copy=True)
    if not pd.api.types.is_numeric_dtype(series):
        raise DatasetError(f"{dataset}: label column {series.name!r} must hold 0/1; it is not numeric")
    values = np.array(series.to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
    if not np.isin(values, (0.0, 1.0)).all():
        odd = pd.unique(values[~np.isin(values, (0.0, 1.0))])[:5]
        raise DatasetError(f"{dataset}: label column {series.name!r} must hold only 0 and 1; found "
                           f"{list(odd)}")
    return values


def _groups(series: pd.Series, dataset: str) -> np.ndarray:
    import pandas as pd

    if series.isna().any():
        raise DatasetError(f"{dataset}: sensitive column {series.name!r} has missing values")
    if pd.api.types.is_float_dtype(series) and (series == series.round()).all():
        series = series.astype(np.int64)
    return series.astype(str).to_numpy(dtype=object)


@dataclass(frozen=True)
class _Others:
    """The label, sensitive and reference columns as a :class:`Dataset` holds them."""

    labels: np.ndarray
    sensitive: dict[str, np.ndarray]
    reference: np.ndarray | None


def _plain_values(column: pa.ChunkedArray) -> np.ndarray | None:
    """A null-free integer, floating or boolean column as numpy values; None for any other."""
    kind = column.type
    if column.null_count or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                                 or pa.types.is_boolean(kind)):
        return None
    return numpy_values(column.combine_chunks())


def _arrow_float64(column: pa.ChunkedArray, valid: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
    """A plain column as float64 values where ``valid`` holds for all of them; None otherwise."""
    values = _plain_values(column)
    if values is None:
        return None
    converted = np.array(values, dtype=np.float64)
    return converted if valid(converted).all() else None


def _arrow_labels(column: pa.ChunkedArray) -> np.ndarray | None:
    """What :func:`_binary_labels` returns for a column that holds only 0 and 1 (False and True);
    None for anything else."""
    return _arrow_float64(column, lambda labels: np.isin(labels, (0.0, 1.0)))


def _arrow_reference(column: pa.ChunkedArray) -> np.ndarray | None:
    """What :func:`_numeric_features` returns for a finite numeric reference column; None for
    anything else."""
    return _arrow_float64(column, np.isfinite)


def _as_strings(values: np.ndarray) -> np.ndarray:
    """``str`` of each value as an object array, one string object per distinct value."""
    distinct, codes = np.unique(values, return_inverse=True)
    return np.array([str(value) for value in distinct], dtype=object)[codes.reshape(-1)]


def _decoded(array: pa.DictionaryArray) -> np.ndarray | None:
    """A dictionary array of strings decoded to an object array, one string object per distinct
    value (as pandas' conversion shares them); None where the dictionary holds nulls."""
    if array.dictionary.null_count:
        return None
    return np.take(np.array(array.dictionary.to_pylist(), dtype=object), numpy_values(array.indices))


def _is_string(kind: pa.DataType) -> bool:
    """Whether ``kind`` is an Arrow string type (32- or 64-bit offsets)."""
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _arrow_groups(column: pa.ChunkedArray) -> np.ndarray | None:
    """What :func:`_groups` returns for a null-free string, dictionary-of-string, integer, boolean
    or integral finite floating column; None for anything else (so that the pandas path words any
    error)."""
    kind = column.type
    if column.null_count:
        return None
    if _is_string(kind):
        return _decoded(column.combine_chunks().dictionary_encode())
    if pa.types.is_dictionary(kind):
        return _decoded(column.combine_chunks()) if _is_string(kind.value_type) else None
    values = _plain_values(column)
    if values is None:
        return None
    if values.dtype.kind == "f":
        values = values.astype(np.float64)
        if not (np.isfinite(values).all() and (values == np.round(values)).all()
                and np.abs(values).max(initial=0.0) < 2.0**63):
            return None
        values = values.astype(np.int64)
    return _as_strings(values)


def _arrow_others(table: pa.Table, schema: DatasetSchema) -> _Others | None:
    """The label, sensitive and reference columns of ``table`` converted without pandas, where
    every one of them is of a plain type and valid; None otherwise."""
    reference = None
    if schema.reference_logits is not None:
        reference = _arrow_reference(table.column(schema.reference_logits))
        if reference is None:
            return None
    labels = _arrow_labels(table.column(schema.label))
    if labels is None:
        return None
    sensitive = {}
    for col in schema.sensitive:
        groups = _arrow_groups(table.column(col))
        if groups is None:
            return None
        sensitive[col] = groups
    return _Others(labels, sensitive, reference)


def _frame_others(frame: pd.DataFrame, schema: DatasetSchema, name: str) -> _Others:
    """The label, sensitive and reference columns of ``frame``, checked as pandas sees them."""
    reference = None
    if schema.reference_logits is not None:
        reference = _numeric_features(frame, [schema.reference_logits], name).reshape(-1)
    labels = _binary_labels(frame[schema.label], name)
    return _Others(labels, {col: _groups(frame[col], name) for col in schema.sensitive}, reference)


def _read_others(path: Path, schema: DatasetSchema) -> _Others | pd.DataFrame:
    """The label, sensitive and reference columns (few, small): converted straight from Arrow
    where they are plain and valid; else (CSV, other types, bad values) as a frame for the pandas
    checks, so that every error reads as it always has. ``ParquetFile``, not ``read_table``:
    that goes through pyarrow.dataset, which imports pandas (about half a second)."""
    columns = [schema.label, *schema.sensitive,
               *((schema.reference_logits,) if schema.reference_logits else ())]
    if _is_parquet(path):
        with pq.ParquetFile(path) as handle:
            table = handle.read(columns=columns, use_threads=False)
        converted = _arrow_others(table, schema)
        return converted if converted is not None else cast("pd.DataFrame", table.to_pandas())
    import pandas as pd

    return pd.read_csv(path, usecols=columns, low_memory=False)


def _rows(others: _Others | pd.DataFrame) -> int:
    """Rows of what :func:`_read_others` returned."""
    return int(others.labels.shape[0]) if isinstance(others, _Others) else len(others)


def _read_features(path: Path, names: list[str], dtype: np.dtype, name: str,
                   transform: RowTransform | None) -> np.ndarray:
    if _is_parquet(path):
        return read_parquet_features(path, names, dtype, name, transform)
    return read_csv_features(path, names, dtype, name, transform)


def load_dataset(path: str | Path, schema: DatasetSchema, name: str = "dataset",
                 dtype: np.dtype | type | None = None, transform: RowTransform | None = None) -> Dataset:
    """Read and validate a dataset; the features go straight into one ``dtype`` array
    (:func:`~workers.engine.io.feature_matrix.feature_dtype`; default float64), or with
    ``transform`` the transformed rows, each batch transformed as it is read (``embedded``).

    Raises:
        DatasetError: what is wrong and how to fix it.
    """
    path = Path(path)
    wanted = feature_dtype(dtype)
    if path.is_file() and is_tensor_dataset(path):
        return _load_tensor_dataset(path, schema, name, wanted, transform)
    features = resolve_features(read_columns(path), schema)
    if not features:
        raise DatasetError(f"{name}: no feature columns left after the label and sensitive ones")
    try:
        others = _read_others(path, schema)
        rows = _rows(others)
        if rows == 0:
            raise DatasetError(f"{name}: the file has no rows")
        matrix = _read_features(path, features, wanted, name, transform)
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path.name} is neither a readable Parquet file nor a CSV with a "
                           f"header row: {exc}") from exc
    if matrix.shape[0] != rows:
        raise DatasetError(f"{name}: the feature columns have {matrix.shape[0]} rows but the label has "
                           f"{rows}")
    if not isinstance(others, _Others):
        others = _frame_others(others, schema, name)
    return Dataset(
        name=name,
        feature_names=tuple(features),
        features=matrix,
        labels=others.labels,
        sensitive=others.sensitive,
        reference_logits=others.reference,
        reference_column=schema.reference_logits,
        embedded=transform is not None,
    )


def _load_tensor_dataset(path: Path, schema: DatasetSchema, name: str, dtype: np.dtype,
                         transform: RowTransform | None) -> Dataset:
    features = resolve_features(tensor_columns(path), schema)
    arrays = read_tensor_dataset(path, schema.label, schema.sensitive, features, schema.reference_logits,
                                 dtype, transform)
    return Dataset(name=name, feature_names=arrays["feature_names"], features=arrays["features"],
                   labels=arrays["labels"], sensitive=arrays["sensitive"],
                   reference_logits=arrays["reference_logits"], reference_column=schema.reference_logits,
                   embedded=transform is not None)


def check_groups_present(reference: Dataset, other: Dataset, column: str) -> None:
    """Refuse a split in which a group of ``column`` seen in ``reference`` has no rows.

    Raises:
        DatasetError: naming the column, the split and the empty group(s).
    """
    if column not in other.sensitive:
        raise DatasetError(f"{other.name}: sensitive column {column!r} is missing")
    seen = set(other.sensitive[column])
    if len(seen) < 2:
        raise DatasetError(f"{other.name}: sensitive column {column!r} has a single group "
                           f"({next(iter(seen))!r}); fairness needs at least two")
    empty = sorted(set(reference.sensitive[column]) - seen)
    if empty:
        raise DatasetError(f"{other.name}: group(s) {empty} of {column!r} have no rows in this split")
