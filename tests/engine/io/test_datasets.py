"""Dataset schema and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workers.engine.errors import DatasetError
from workers.engine.io.datasets import check_groups_present, load_dataset, parse_schema

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
