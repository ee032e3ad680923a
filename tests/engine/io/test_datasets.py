"""Dataset schema and validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.app.support import ROOT
from workers.engine.errors import DatasetError
from workers.engine.io.datasets import (
    _binary_labels,
    _groups,
    _numeric_features,
    check_groups_present,
    load_dataset,
    parse_schema,
)

SCHEMA = parse_schema({"label": "y", "sensitive": ["s"]})


def _frame(n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                         "y": rng.integers(0, 2, n), "s": np.where(np.arange(n) % 2, "a", "b")})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_load_the_same(tmp_path: Path, suffix: str) -> None:
    frame = _frame()
    path = tmp_path / f"d{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    data = load_dataset(path, SCHEMA)
    assert data.feature_names == ("x1", "x2")
    assert np.allclose(data.features, frame[["x1", "x2"]].to_numpy())
    assert set(data.sensitive["s"]) == {"a", "b"}


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda f: f.assign(x1=f["x1"].astype(str) + "!"), "not numeric"),
    (lambda f: f.assign(y=f["y"] * 3), "only 0 and 1"),
    (lambda f: f.assign(x2=np.where(f.index == 3, np.inf, f["x2"])), "NaN or Inf"),
    (lambda f: f.drop(columns=["s"]), r"\['s'\] not in the dataset"),
    (lambda f: f.assign(s=np.where(f.index == 0, None, f["s"])), "missing values"),
])
def test_bad_columns_are_named(tmp_path: Path, mutate: object, message: str) -> None:
    path = tmp_path / "d.parquet"
    mutate(_frame()).to_parquet(path, index=False)  # type: ignore[operator]
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, SCHEMA)


def test_empty_group_in_a_split_is_refused(tmp_path: Path) -> None:
    train, audit = tmp_path / "train.parquet", tmp_path / "audit.parquet"
    frame = _frame()
    frame.assign(s=np.where(frame.index < 3, "c", frame["s"])).to_parquet(train, index=False)
    frame.to_parquet(audit, index=False)
    with pytest.raises(DatasetError, match=r"group\(s\) \['c'\] of 's' have no rows"):
        check_groups_present(load_dataset(train, SCHEMA), load_dataset(audit, SCHEMA, "audit"), "s")


def test_schema_refuses_label_as_sensitive() -> None:
    with pytest.raises(DatasetError, match="both the label and sensitive"):
        parse_schema({"label": "y", "sensitive": ["y"]})


_PLAIN_COLUMNS = {
    "int labels, string groups": (pa.array([0, 1] * 6), pa.array(["a", "b", "c"] * 4)),
    "bool labels, large-string groups": (pa.array([True, False] * 6),
                                         pa.array(["x", "y"] * 6, pa.large_string())),
    "float labels, dictionary groups": (pa.array([0.0, 1.0] * 6, pa.float32()),
                                        pa.array(["p", "q", "p"] * 4).dictionary_encode()),
    "uint8 labels, integer groups": (pa.array([1, 0] * 6, pa.uint8()), pa.array([-3, 7, 2**40] * 4)),
    "integral float groups": (pa.array([0, 1] * 6), pa.array([0.0, 1.0, -0.0, 2.0] * 3)),
    "bool groups": (pa.array([0, 1] * 6), pa.array([True, False, False] * 4)),
}


@pytest.mark.parametrize("name", list(_PLAIN_COLUMNS))
def test_plain_parquet_columns_convert_as_the_pandas_checks_do(tmp_path: Path, name: str) -> None:
    """Label, group and reference columns of plain types are converted from Arrow without pandas
    to exactly what the pandas checks give: the same dtypes, values and group strings."""
    labels, groups = _PLAIN_COLUMNS[name]
    table = pa.table({"x": pa.array(np.linspace(-1, 1, 12)), "y": labels, "s": groups,
                      "reference_logits": pa.array(np.arange(12) - 5, pa.int64())})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=5)
    schema = parse_schema({"label": "y", "sensitive": ["s"], "reference_logits": "reference_logits"})
    data = load_dataset(path, schema)
    frame = table.to_pandas()
    expected_labels = _binary_labels(frame["y"], "dataset")
    assert data.labels.dtype == expected_labels.dtype and data.labels.tobytes() == expected_labels.tobytes()
    expected_groups = _groups(frame["s"], "dataset")
    assert data.sensitive["s"].dtype == object and list(data.sensitive["s"]) == list(expected_groups)
    assert all(type(value) is str for value in data.sensitive["s"])
    expected_reference = _numeric_features(frame, ["reference_logits"], "dataset").reshape(-1)
    assert data.reference_logits is not None
    assert data.reference_logits.tobytes() == expected_reference.tobytes()


@pytest.mark.parametrize(("labels", "groups", "message"), [
    (pa.array([0, 1, None] * 4), pa.array(["a", "b"] * 6), r"found \[np.float64\(nan\)\]"),
    (pa.array([0, 1, 2] * 4), pa.array(["a", "b"] * 6), r"only 0 and 1; found \[np.float64\(2.0\)\]"),
    (pa.array(["0", "1"] * 6), pa.array(["a", "b"] * 6), "it is not numeric"),
    (pa.array([0, 1] * 6), pa.array([0.5, 1.0] * 6), None),
    (pa.array([0, 1] * 6), pa.array([0.0, float("nan")] * 6), "'s' has missing values"),
    (pa.array([0, 1] * 6), pa.array(["a", None] * 6).dictionary_encode(), "'s' has missing values"),
])
def test_other_parquet_columns_go_through_the_pandas_checks(tmp_path: Path, labels: pa.Array,
                                                           groups: pa.Array, message: str | None) -> None:
    """Columns the Arrow conversion does not vouch for are checked by pandas as before: the same
    errors, and fractional float groups written as pandas writes them."""
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": pa.array(np.zeros(12)), "y": labels, "s": groups}), path)
    if message is not None:
        with pytest.raises(DatasetError, match=message):
            load_dataset(path, SCHEMA)
        return
    assert list(load_dataset(path, SCHEMA).sensitive["s"][:2]) == ["0.5", "1.0"]


def test_a_plain_parquet_dataset_loads_without_pandas(tmp_path: Path) -> None:
    """Reading plain Parquet columns imports no pandas (about half a second)."""
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path, index=False)
    probe = ("import sys; from workers.engine.io.datasets import load_dataset, parse_schema; "
             f"data = load_dataset({str(path)!r}, parse_schema({{'label': 'y', 'sensitive': ['s']}})); "
             "print(data.n, 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["20", "False"]
