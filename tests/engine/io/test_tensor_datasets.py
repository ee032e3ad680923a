"""Tensor datasets (safetensors arrays): loaded without pickle, validated, usable end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.engine.small_data import export_tensor_datasets, tensor_args, write_small_example
from workers.cli.main import main
from workers.engine.errors import DatasetError
from workers.engine.io.datasets import load_dataset, parse_schema, read_columns

SCHEMA = parse_schema({"label": "y", "sensitive": ["group"]})


def _write(path: Path, x: np.ndarray, y: np.ndarray, group: np.ndarray, **extra: np.ndarray) -> None:
    metadata = {"softunlearn.dataset": json.dumps({"groups": {"group": ["older", "young"]}})}
    save_file({"x": x, "y": y, "group": group, **extra}, str(path), metadata=metadata)


def test_a_tensor_dataset_loads_with_names_and_group_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    _write(tmp_path / "d.safetensors", x, rng.integers(0, 2, 50).astype(np.int64),
           rng.integers(0, 2, 50).astype(np.uint8))
    data = load_dataset(tmp_path / "d.safetensors", SCHEMA, "train")
    assert data.feature_names == ("x0", "x1", "x2", "x3")
    assert np.array_equal(data.features, x.astype(np.float64))
    assert set(data.sensitive["group"]) <= {"older", "young"}
    assert read_columns(tmp_path / "d.safetensors")[:4] == ["x0", "x1", "x2", "x3"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: {**t, "y": np.full(50, 2, dtype=np.int64)}, "only 0 and 1"),
    (lambda t: {**t, "y": t["y"][:40]}, "shape \\[50\\]"),
    (lambda t: {k: v for k, v in t.items() if k != "group"}, "not in the dataset"),
    (lambda t: {**t, "group": t["group"].astype(np.float32)}, "integer group codes"),
    (lambda t: {**t, "x": np.full((50, 4), np.nan, dtype=np.float32)}, "NaN or Inf"),
    (lambda t: {**t, "x": np.zeros((50, 2, 2), dtype=np.float32)}, "\\[n, D\\] features or"),
])
def test_bad_tensor_datasets_are_refused_by_name(tmp_path: Path, change: object, message: str) -> None:
    rng = np.random.default_rng(1)
    tensors = {"x": rng.normal(size=(50, 4)).astype(np.float32), "y": rng.integers(0, 2, 50).astype(np.int64),
               "group": rng.integers(0, 2, 50).astype(np.int64)}
    save_file(change(tensors), str(tmp_path / "bad.safetensors"))  # type: ignore[operator]
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "bad.safetensors", SCHEMA, "train")


def test_image_tensors_are_refused_for_an_mlp_with_what_to_do(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    example = write_small_example(tmp_path / "small")
    rng = np.random.default_rng(2)
    for split in ("train", "audit", "eval"):
        _write(tmp_path / f"{split}.safetensors", rng.normal(size=(60, 1, 4, 4)).astype(np.float32),
               rng.integers(0, 2, 60).astype(np.int64), rng.integers(0, 2, 60).astype(np.int64))
    code = main(["correct", "--model", str(example.root / "model.safetensors"), "--arch",
                 str(example.root / "arch.json"), "--train", str(tmp_path / "train.safetensors"),
                 "--audit", str(tmp_path / "audit.safetensors"), "--label", "y", "--sensitive", "group",
                 "--objective", "demographic_parity", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and not (tmp_path / "out").exists()
    assert "images of shape [1, 4, 4]" in capsys.readouterr().err


def test_a_scrambled_export_is_caught_by_the_reference_logits(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """safetensors writes an array's raw buffer: a column-major array comes back scrambled. The
    rebuilt model then cannot reproduce the exported logits, and the job is refused."""
    example = write_small_example(tmp_path / "small", reference_logits=True)
    export_tensor_datasets(example.root, tmp_path, contiguous=False)
    args = tensor_args(example.args(tmp_path / "out", "--objective", "demographic_parity"), tmp_path)
    assert main(args) == 2
    assert "does not reproduce the reference logits" in capsys.readouterr().err


def test_the_same_data_as_tensors_or_parquet_gives_the_same_correction(tmp_path: Path) -> None:
    example = write_small_example(tmp_path / "small", reference_logits=True)
    export_tensor_datasets(example.root, tmp_path, contiguous=True)
    parquet = tmp_path / "from-parquet"
    assert main(example.args(parquet, "--objective", "demographic_parity", "--no-robust-eval")) in (0, 3)
    tensors = tmp_path / "from-tensors"
    assert main(tensor_args(example.args(tensors, "--objective", "demographic_parity", "--no-robust-eval"),
                             tmp_path)) in (0, 3)
    first, second = (json.loads((d / "report.json").read_text()) for d in (parquet, tensors))
    assert second["before"]["eval"] == first["before"]["eval"]
    assert second["after"]["eval"]["accuracy"] == pytest.approx(first["after"]["eval"]["accuracy"], abs=1e-12)
    assert any("reproduces the reference logits" in n for n in second["notes"])
