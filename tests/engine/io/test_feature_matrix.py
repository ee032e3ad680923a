"""Features read straight into one array of the model's dtype, batch by batch."""

from __future__ import annotations

import decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.engine.errors import DatasetError
from workers.engine.io import feature_matrix
from workers.engine.io.datasets import load_dataset, parse_schema
from workers.engine.io.feature_matrix import feature_dtype, read_csv_features, read_parquet_features

SCHEMA = parse_schema({"label": "y", "sensitive": ["s"]})


def _frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(-5, 5, n), "c": rng.random(n) < 0.5,
                         "y": rng.integers(0, 2, n), "s": np.where(np.arange(n) % 3, "p", "q")})


@pytest.fixture()
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 64 rows, so that a 300-row file takes several batches and a partial one, and
    Parquet reads of two 50-row columns, so that a row group is read in several column groups."""
    monkeypatch.setattr(feature_matrix, "BATCH_ROWS", 64)
    monkeypatch.setattr(feature_matrix, "READ_BYTES", 2 * 50 * 8)


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parquet_batches_fill_one_array_in_the_model_dtype(tmp_path: Path, dtype: type) -> None:
    frame = _frame()
    path = tmp_path / "d.parquet"
    frame.to_parquet(path, index=False, row_group_size=50)
    values = read_parquet_features(path, ["c", "a", "b"], np.dtype(dtype), "train")
    assert values.dtype == dtype and values.flags.c_contiguous and values.shape == (300, 3)
    expected = frame[["c", "a", "b"]].to_numpy(dtype=dtype)
    assert np.array_equal(values, expected)


@pytest.mark.usefixtures("small_batches")
def test_csv_chunks_give_the_same_array(tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    values = read_csv_features(path, ["a", "b"], np.dtype(np.float32), "train")
    assert values.dtype == np.float32
    assert np.allclose(values, frame[["a", "b"]].to_numpy(), atol=1e-6)


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_bad_cell_in_a_late_batch_is_named(tmp_path: Path, suffix: str) -> None:
    frame = _frame()
    frame.loc[290, "b"] = np.nan
    path = tmp_path / f"d{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    with pytest.raises(DatasetError, match=r"NaN or Inf in feature column\(s\) \['b'\]"):
        load_dataset(path, SCHEMA, "train", np.float32)


def test_a_string_column_is_refused_from_the_parquet_schema(tmp_path: Path) -> None:
    table = pa.table({"a": pa.array(["1", "2"]), "y": pa.array([0, 1]), "s": pa.array(["p", "q"])})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"\['a'\] are not numeric"):
        load_dataset(path, SCHEMA, "train", np.float32)


def test_load_dataset_keeps_the_labels_and_groups(tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "d.parquet"
    frame.to_parquet(path, index=False)
    data = load_dataset(path, SCHEMA, "train", np.float32)
    assert data.features.dtype == np.float32 and data.feature_names == ("a", "b", "c")
    assert np.array_equal(data.labels, frame["y"].to_numpy(dtype=np.float64))
    assert list(data.sensitive["s"][:3]) == ["q", "p", "p"]


@pytest.mark.parametrize(("given", "held"), [(None, np.float64), (np.float32, np.float32),
                                             (np.float64, np.float64), (np.float16, np.float32)])
def test_feature_dtype(given: type | None, held: type) -> None:
    assert feature_dtype(given) == np.dtype(held)


@pytest.mark.parametrize("array", [
    pa.array(np.arange(-5, 20, dtype=np.int16)),
    pa.array(np.arange(25, dtype=np.uint64) * np.uint64(2**59)),
    pa.array(np.linspace(-1, 1, 25).astype(np.float16)),
    pa.array(np.linspace(-1, 1, 25)),
    pa.array(np.arange(25) % 3 == 0),
    pa.array([decimal.Decimal("1.5")] * 25),
])
@pytest.mark.parametrize(("offset", "length"), [(0, 25), (3, 13), (9, 0)])
def test_numpy_values_are_those_of_to_numpy(array: pa.Array, offset: int, length: int) -> None:
    """Numbers and booleans, sliced at any offset (booleans at bits within a byte), as
    ``to_numpy`` gives them: the same dtype and values."""
    part = array.slice(offset, length)
    values, expected = feature_matrix.numpy_values(part), part.to_numpy(zero_copy_only=False)
    assert values.dtype == expected.dtype and values.shape == expected.shape
    assert values.tolist() == expected.tolist()
