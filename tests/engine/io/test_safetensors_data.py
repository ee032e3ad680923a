"""Tensor data read with numpy in chunks: NaN/Inf counted per dtype (BF16 included), rows widened."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from workers.engine.io.architecture import parse_arch
from workers.engine.io.safetensors_data import check_finite_weights, count_non_finite, data_start, read_rows
from workers.engine.io.safetensors_header import (
    MixedDtypes,
    NonFiniteWeights,
    check_uniform_dtype,
    read_header_and_metadata,
)
from workers.engine.io.tensor_datasets import DATASET_DTYPES

ARCH = parse_arch({"type": "mlp", "in_features": 3, "hidden": [2], "activation": "relu"})


def _saved(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[Path, dict[str, object]]:
    save_file(tensors, str(path))
    return path, dict(read_header_and_metadata(path, dtypes=DATASET_DTYPES)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_non_finite_values_are_counted_in_every_floating_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    values = torch.linspace(-3, 3, 10_000, dtype=torch.float64).to(dtype)
    values[[5, 700, 9_999]] = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)
    path, header = _saved(tmp_path / "w.safetensors", {"w": values, "ok": torch.ones(7, dtype=dtype)})
    start = data_start(path)
    assert count_non_finite(path, start, header["w"], chunk_bytes=64) == 3  # type: ignore[arg-type]
    assert count_non_finite(path, start, header["ok"], chunk_bytes=64) == 0  # type: ignore[arg-type]
    rows = read_rows(path, start, header["w"], 0, 5)  # type: ignore[arg-type]
    assert rows.tolist() == values[:5].to(torch.float64).tolist()  # bf16 widened exactly


def test_integer_tensors_are_never_non_finite(tmp_path: Path) -> None:
    path, header = _saved(tmp_path / "c.safetensors", {"n": torch.tensor(-1, dtype=torch.int64)})
    assert count_non_finite(path, data_start(path), header["n"]) == 0  # type: ignore[arg-type]


def test_a_nan_checkpoint_names_the_tensor_and_the_count(tmp_path: Path) -> None:
    weight = torch.zeros(2, 3)
    weight[0, 1] = float("nan")
    bias = torch.full((1,), float("inf"))
    state = {"0.weight": weight, "0.bias": torch.zeros(2), "2.weight": torch.zeros(1, 2), "2.bias": bias}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    tensors = read_header_and_metadata(path)[0]
    with pytest.raises(NonFiniteWeights) as caught:
        check_finite_weights(path, tensors)
    first = min(("0.weight", "2.bias"), key=lambda k: tensors[k].begin)
    assert f"tensor {first!r} holds 1 NaN or Inf" in str(caught.value)
    assert "1 other tensor(s) too" in str(caught.value) and caught.value.code == "non_finite_weights"
    save_file({**state, "0.weight": torch.zeros(2, 3), "2.bias": torch.zeros(1)}, str(path))
    check_finite_weights(path, read_header_and_metadata(path)[0])


def test_mixed_floating_dtypes_are_named(tmp_path: Path) -> None:
    state = {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2, dtype=torch.float16),
             "2.weight": torch.zeros(1, 2), "2.bias": torch.zeros(1, dtype=torch.bfloat16)}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    named = r"BF16 \(1 tensor\), F16 \(1 tensor\), F32 \(2 tensors\)"
    with pytest.raises(MixedDtypes, match=named) as caught:
        check_uniform_dtype(read_header_and_metadata(path)[0], ARCH)
    assert caught.value.code == "mixed_dtypes"
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(path))
    check_uniform_dtype(read_header_and_metadata(path)[0], ARCH)
