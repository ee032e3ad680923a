"""The pure-Python safetensors header validator."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from workers.engine.errors import CheckpointError
from workers.engine.io.architecture import parse_arch
from workers.engine.io.checkpoint import load_checkpoint
from workers.engine.io.safetensors_header import check_against_arch, read_header, sniff_format

ARCH = parse_arch({"type": "mlp", "in_features": 3, "hidden": [2], "activation": "relu"})


def _valid(path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    save_file(model.state_dict(), str(path))
    return path


def _raw(header: dict[str, object], data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_valid_checkpoint_round_trips(tmp_path: Path) -> None:
    path = _valid(tmp_path / "m.safetensors")
    header = read_header(path)
    check_against_arch(header, ARCH)
    state = load_checkpoint(path, ARCH)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_sniffing_recognizes_pickle_and_zip() -> None:
    assert sniff_format(pickle.dumps({"a": 1})) == "pickle"
    assert sniff_format(b"PK\x03\x04rest") == "zip"
    assert sniff_format(b"\x00" * 16) == "unknown"


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 4, "data section"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4, "do not match"),
    ({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\x00" * 8, "not allowed"),
    ({"../x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4, "not allowed"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4, "overlap"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"", "malformed"),
])
def test_lying_headers_are_refused(tmp_path: Path, header: dict[str, object], data: bytes,
                                   message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_raw(header, data))
    with pytest.raises(CheckpointError, match=message):
        read_header(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    good = _valid(tmp_path / "m.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good[:40])
    with pytest.raises(CheckpointError):
        read_header(path)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    path = _valid(tmp_path / "m.safetensors")
    wider = parse_arch({"type": "mlp", "in_features": 3, "hidden": [4]})
    expected = r"0.weight has shape \[2, 3\], the architecture needs \[4, 3\]"
    with pytest.raises(CheckpointError, match=expected):
        check_against_arch(read_header(path), wider)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in torch.nn.Sequential(
        torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1)).state_dict().items()}
    state["2.bias"][0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(tmp_path / "nan.safetensors", ARCH)


def test_a_shape_of_more_than_eight_dimensions_is_refused() -> None:
    import io

    header = json.dumps({"w": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}).encode()
    with pytest.raises(CheckpointError, match="9 dimensions; at most 8"):
        read_header(io.BytesIO(struct.pack("<Q", len(header)) + header + bytes(4)))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1] * 8, "data_offsets": [0, 4]}}).encode()
    assert read_header(io.BytesIO(struct.pack("<Q", len(header)) + header + bytes(4)))["w"].shape == (1,) * 8
