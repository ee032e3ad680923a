"""Reading a safetensors file's tensor data with numpy, a bounded slice at a time (no torch).

The header (:mod:`workers.engine.io.safetensors_header`) says where each tensor's bytes are; this
module maps them with ``np.memmap`` and hands out rows in chunks of at most
:data:`CHUNK_BYTES`, so checking a 512 MiB checkpoint or a tensor dataset never holds more than
one chunk (and its float64 copy) in memory. numpy has no bfloat16: BF16 values are widened to
float32 exactly (a bfloat16 is the upper half of a float32).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from workers.engine.io.safetensors_header import NonFiniteWeights, TensorInfo

__all__ = ["CHUNK_BYTES", "check_finite_weights", "count_non_finite", "data_start", "iter_rows", "read_rows"]

CHUNK_BYTES = 16 * 1024 * 1024
"""Most bytes of one tensor read (mapped) at a time."""
_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
          "I32": np.int32, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.uint16}
_BF16_EXPONENT = 0x7F80


def data_start(path: str | Path) -> int:
    """Byte offset of the data section (after the 8-byte length and the JSON header)."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
    return 8 + int(size)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _raw(path: Path, start: int, info: TensorInfo, first: int, count: int) -> np.ndarray:
    """``count`` elements from element ``first`` of the flat tensor, in its stored dtype."""
    dtype = np.dtype(_NUMPY[info.dtype]).newbyteorder("<")
    if count == 0:
        return np.empty(0, dtype=dtype)
    offset = start + info.begin + first * dtype.itemsize
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(raw)


def read_rows(path: str | Path, start: int, info: TensorInfo, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` (along the first axis) of a tensor as a new array (BF16 as float32)."""
    path = Path(path)
    row = _numel(info.shape[1:]) if info.shape else 1
    raw = _raw(path, start, info, lo * row, (hi - lo) * row)
    values = np.array(_widen(raw, info.dtype), copy=True)
    return values.reshape((hi - lo, *info.shape[1:]))


def iter_rows(info: TensorInfo, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` row ranges covering the tensor's first axis, each at most ``chunk_bytes``
    stored bytes (at least one row)."""
    rows = info.shape[0] if info.shape else 1
    row_bytes = max(1, (info.end - info.begin) // max(rows, 1))
    step = max(1, chunk_bytes // row_bytes)
    for lo in range(0, rows, step):
        yield lo, min(rows, lo + step)


def count_non_finite(path: str | Path, start: int, info: TensorInfo, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many NaN or Inf values a floating tensor holds (0 for integer and bool tensors), read in
    chunks of at most ``chunk_bytes``."""
    if info.dtype not in ("F16", "BF16", "F32", "F64"):
        return 0
    path = Path(path)
    itemsize = np.dtype(_NUMPY[info.dtype]).itemsize
    total, step = _numel(info.shape), max(1, chunk_bytes // itemsize)
    bad = 0
    for first in range(0, total, step):
        raw = _raw(path, start, info, first, min(step, total - first))
        if info.dtype == "BF16":
            bad += int(np.count_nonzero((raw & _BF16_EXPONENT) == _BF16_EXPONENT))
        else:
            bad += int(raw.size - np.count_nonzero(np.isfinite(raw)))
        del raw
    return bad


def check_finite_weights(path: str | Path, tensors: dict[str, TensorInfo]) -> None:
    """Refuse a checkpoint whose floating tensors hold NaN or Inf, reading them in chunks.

    Raises:
        NonFiniteWeights: naming the first such tensor (in file order), its count and how many
            other tensors are affected.
    """
    start = data_start(path)
    bad = {key: count for key in sorted(tensors, key=lambda k: tensors[k].begin)
           if (count := count_non_finite(path, start, tensors[key]))}
    if bad:
        first, count = next(iter(bad.items()))
        others = f" ({len(bad) - 1} other tensor(s) too)" if len(bad) > 1 else ""
        raise NonFiniteWeights(f"tensor {first!r} holds {count:,} NaN or Inf value(s) of "
                               f"{_numel(tensors[first].shape):,}{others}; the weights must be finite: "
                               "check the training run that produced them")
