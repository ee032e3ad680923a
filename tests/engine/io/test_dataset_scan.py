"""The chunked validation accepts and refuses what ``load_dataset`` does, a chunk at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from workers.engine.errors import DatasetError
from workers.engine.io.dataset_scan import scan_dataset
from workers.engine.io.datasets import DatasetSchema, load_dataset, parse_schema

SCHEMA = parse_schema({"label": "y", "sensitive": ["s"]})
TINY_CHUNKS = 8 * 4 * 7
"""Seven rows of four columns a chunk: every file below is read in several chunks."""


def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.integers(0, 5, n), "y": rng.integers(0, 2, n),
                         "s": np.where(np.arange(n) % 3, "a", "b")})


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


def _both(path: Path, schema: DatasetSchema = SCHEMA) -> None:
    """Scan and full load agree: same rows, features and groups."""
    summary = scan_dataset(path, schema, "file", chunk_bytes=TINY_CHUNKS)
    data = load_dataset(path, schema, "file")
    assert summary.n_rows == data.n
    assert summary.feature_names == list(data.feature_names)
    assert summary.groups == {c: sorted(set(map(str, v))) for c, v in data.sensitive.items()}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_valid_table_scans_like_it_loads(tmp_path: Path, suffix: str) -> None:
    _both(_write(_frame(), tmp_path / f"d{suffix}"))
    float_groups = _frame().assign(s=np.where(np.arange(50) % 2, 1.0, 2.0))  # integral floats: "1", "2"
    _both(_write(float_groups, tmp_path / f"f{suffix}"))
    summary = scan_dataset(tmp_path / f"f{suffix}", SCHEMA, chunk_bytes=TINY_CHUNKS)
    assert summary.groups == {"s": ["1", "2"]}
    chosen = parse_schema({"label": "y", "sensitive": ["s"], "features": ["x2"]})
    _both(tmp_path / f"d{suffix}", chosen)


BAD: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = [
    (lambda f: f.assign(x1=f["x1"].astype(str) + "!"), "not numeric"),
    (lambda f: f.assign(y=f["y"] * 3), "only 0 and 1"),
    (lambda f: f.assign(x2=np.where(f.index == 45, np.inf, f["x2"])), "NaN or Inf"),
    (lambda f: f.assign(x1=np.where(f.index == 40, np.nan, f["x1"])), "NaN or Inf"),
    (lambda f: f.drop(columns=["s"]), r"\['s'\] not in the dataset"),
    (lambda f: f.assign(s=f["s"].where(f.index != 44, None)), "missing values"),
    (lambda f: f.iloc[:0], "no rows"),
]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(("mutate", "message"), BAD)
def test_a_bad_table_is_refused_like_the_full_load(tmp_path: Path, suffix: str,
                                                  mutate: Callable[[pd.DataFrame], pd.DataFrame],
                                                  message: str) -> None:
    path = _write(mutate(_frame()), tmp_path / f"d{suffix}")
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, SCHEMA, "file")
    with pytest.raises(DatasetError, match=message):
        scan_dataset(path, SCHEMA, "file", chunk_bytes=TINY_CHUNKS)


def test_csv_true_false_in_one_chunk_and_numbers_in_another_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x1,s,y\n" + "0.5,a,True\n0.1,b,False\n" * 10 + "0.3,a,1\n0.2,b,0\n" * 10)
    with pytest.raises(DatasetError, match="not numeric"):
        load_dataset(path, SCHEMA, "file")  # read whole, the label column is strings
    with pytest.raises(DatasetError, match="mixes true/false with numbers"):
        scan_dataset(path, SCHEMA, "file", chunk_bytes=TINY_CHUNKS)


def _tensor_file(path: Path, **override: np.ndarray) -> Path:
    n = 40
    rng = np.random.default_rng(1)
    tensors = {"x": rng.normal(size=(n, 3)).astype(np.float32), "y": (np.arange(n) % 2).astype(np.int64),
               "s": (np.arange(n) % 3 == 0).astype(np.int64), **override}
    described = {"feature_names": ["a", "b", "c"], "groups": {"s": ["F", "M"]}}
    metadata = {"softunlearn.dataset": json.dumps(described)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_a_tensor_dataset_scans_like_it_loads(tmp_path: Path) -> None:
    path = _tensor_file(tmp_path / "d.safetensors")
    _both(path)
    assert scan_dataset(path, SCHEMA, chunk_bytes=64).groups == {"s": ["F", "M"]}
    _both(path, parse_schema({"label": "y", "sensitive": ["s"], "features": ["c", "a"]}))


@pytest.mark.parametrize(("override", "message"), [
    ({"x": np.where(np.arange(120).reshape(40, 3) == 100, np.nan, 0.0).astype(np.float32)}, "NaN or Inf"),
    ({"y": (np.arange(40) % 2 * 3).astype(np.int64)}, "only 0 and 1"),
    ({"y": np.zeros(39, np.int64)}, "must have shape"),
    ({"s": (np.arange(40) % 3).astype(np.int64)}, "label for every code"),
    ({"s": np.zeros(40, np.float32)}, "integer group codes"),
])
def test_a_bad_tensor_dataset_is_refused_like_the_full_load(tmp_path: Path, override: dict[str, np.ndarray],
                                                           message: str) -> None:
    path = _tensor_file(tmp_path / "d.safetensors", **override)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, SCHEMA, "file")
    with pytest.raises(DatasetError, match=message):
        scan_dataset(path, SCHEMA, "file", chunk_bytes=64)
