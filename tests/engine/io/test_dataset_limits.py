"""Dataset caps checked from metadata, header lines and line counts, before anything is decoded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from workers.engine.io.dataset_limits import (
    MAX_CSV_LINE_BYTES,
    DatasetLimits,
    DatasetTooLarge,
    measure_dataset,
)
from workers.engine.io.dataset_scan import scan_dataset
from workers.engine.io.datasets import parse_schema

SCHEMA = parse_schema({"label": "y", "sensitive": ["s"]})


def _int8_parquet(path: Path, rows: int, features: int = 1) -> Path:
    columns = {f"x{i}": pa.array(np.zeros(rows, np.int8)) for i in range(features)}
    columns |= {"s": pa.array(np.zeros(rows, np.int8)), "y": pa.array(np.zeros(rows, np.int8))}
    pq.write_table(pa.table(columns), path, use_dictionary=False, compression="zstd")  # fast to write
    return path


def test_fifty_million_rows_in_a_tiny_parquet_are_refused_from_the_footer(tmp_path: Path) -> None:
    path = _int8_parquet(tmp_path / "d.parquet", 50_000_000)
    assert path.stat().st_size < 2_000_000  # compresses to kilobytes: the footer is all that is read
    with pytest.raises(DatasetTooLarge) as caught:
        scan_dataset(path, SCHEMA, "file", DatasetLimits())
    error = caught.value
    assert (error.code, error.what, error.measured, error.limit) == ("dataset_too_large", "rows",
                                                                     50_000_000, 20_000_000)
    assert "SOFTUNLEARN_MAX_DATASET_ROWS" in str(error) and "50,000,000" in str(error)


def test_parquet_decoded_estimate_counts_the_used_columns(tmp_path: Path) -> None:
    path = _int8_parquet(tmp_path / "d.parquet", 1000, features=5)
    size = measure_dataset(path, SCHEMA, DatasetLimits())
    assert (size.rows, size.columns, size.decoded_bytes) == (1000, 7, 1000 * 7 * 8)
    only_two = parse_schema({"label": "y", "sensitive": ["s"], "features": ["x0"]})
    assert measure_dataset(path, only_two, DatasetLimits()).decoded_bytes == 1000 * 3 * 8
    with pytest.raises(DatasetTooLarge, match="SOFTUNLEARN_MAX_DATASET_DECODED_BYTES"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits(max_dataset_decoded_bytes=1000 * 7 * 8 - 1))
    with pytest.raises(DatasetTooLarge, match="SOFTUNLEARN_MAX_DATASET_COLUMNS"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits(max_dataset_columns=6))
    exact = DatasetLimits(max_dataset_decoded_bytes=1000 * 7 * 8)
    assert scan_dataset(path, SCHEMA, "file", exact).n_rows == 1000


def test_a_nested_parquet_column_the_schema_uses_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": pa.array([[0] * 1000] * 3), "s": [0, 1, 0], "y": [0, 1, 1]}), path)
    with pytest.raises(ValueError, match="'x' is nested"):
        measure_dataset(path, SCHEMA, DatasetLimits())


def test_a_hundred_thousand_column_csv_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    width = 100_000
    path.write_text(",".join(f"c{i}" for i in range(width)) + ",s,y\n" + ",".join(["0"] * (width + 2)) + "\n")
    assert len(path.read_bytes().split(b"\n")[0]) < MAX_CSV_LINE_BYTES  # the column cap, not the line cap
    start = time.perf_counter()
    with pytest.raises(DatasetTooLarge) as caught:
        scan_dataset(path, SCHEMA, "file", DatasetLimits())
    elapsed = time.perf_counter() - start
    assert (caught.value.what, caught.value.measured) == ("columns", width + 2)
    print(f"100,002-column CSV refused in {elapsed:.3f} s")


def test_a_header_line_over_the_line_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"x" * (MAX_CSV_LINE_BYTES + 10) + b",s,y\n1,0,0\n")
    with pytest.raises(DatasetTooLarge, match="header line"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits())


def test_a_data_line_over_the_line_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"x,s,y\n1,0,0\n" + b"1" * (MAX_CSV_LINE_BYTES + 10) + b",0,1\n2,1,0")
    with pytest.raises(DatasetTooLarge, match="longest line"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits())


def test_csv_rows_are_counted_from_newlines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,s,y\n" + "0.5,1,0\n" * 999 + "0.5,0,1")  # no final newline
    size = measure_dataset(path, SCHEMA, DatasetLimits())
    assert (size.rows, size.columns, size.decoded_bytes) == (1000, 3, 1000 * 3 * 8)
    with pytest.raises(DatasetTooLarge, match="1,000 rows; at most 999"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits(max_dataset_rows=999))
    assert scan_dataset(path, SCHEMA, "file", DatasetLimits(max_dataset_rows=1000)).n_rows == 1000


def test_tensor_dataset_caps_come_from_the_header_shapes(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    n = 100
    save_file({"x": np.zeros((n, 3, 4, 4), np.float32), "y": np.zeros(n, np.int64),
               "s": (np.arange(n) % 2).astype(np.int64)}, str(path),
              metadata={"softunlearn.dataset": json.dumps({})})
    size = measure_dataset(path, SCHEMA, DatasetLimits())
    assert (size.rows, size.columns, size.decoded_bytes) == (n, 3, n * (48 + 2) * 8)
    with pytest.raises(DatasetTooLarge, match="100 rows; at most 99"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits(max_dataset_rows=99))
    with pytest.raises(DatasetTooLarge, match="decoded"):
        scan_dataset(path, SCHEMA, "file", DatasetLimits(max_dataset_decoded_bytes=n * 50 * 8 - 1))
