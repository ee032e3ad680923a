"""A strict reader of safetensors headers, in pure Python (no torch, no pickle).

Used before any tensor is loaded, by the engine and by the HTTP front end at upload time, so a
file that is not a well-formed safetensors checkpoint for the declared architecture is refused
before its bytes reach a deserializer. Pickle-based files (``torch.save``: raw pickle or a zip
archive) are recognized by their magic bytes and refused without being unpickled.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from workers.engine.errors import CheckpointError
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.json_input import load_json

__all__ = [
    "ALLOWED_DTYPES",
    "FLOATING_DTYPES",
    "MixedDtypes",
    "NonFiniteWeights",
    "TensorInfo",
    "check_against_arch",
    "check_uniform_dtype",
    "checkpoint_dtypes",
    "read_header",
    "read_header_and_metadata",
    "sniff_format",
]

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 1024
MAX_RANK = 8
"""Most dimensions of a tensor (a conv weight has 4, an image batch 4); a longer shape list is a
hostile header, not a model."""
ALLOWED_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
FLOATING_DTYPES = frozenset(ALLOWED_DTYPES)
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.]{1,200}")


class MixedDtypes(CheckpointError):
    """The checkpoint's weights are not all of one floating dtype."""

    code = "mixed_dtypes"


class NonFiniteWeights(CheckpointError):
    """A tensor of the checkpoint holds NaN or Inf."""

    code = "non_finite_weights"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def sniff_format(head: bytes) -> str:
    """Name the container format from a file's first bytes.

    Returns one of ``pickle`` (a raw pickle stream, as ``torch.save`` wrote before 1.6 or
    ``pickle.dump``), ``zip`` (``torch.save``'s zip archive, TorchScript), ``safetensors`` or
    ``unknown``.
    """
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9:
        (size,) = struct.unpack("<Q", head[:8])
        if 2 <= size <= MAX_HEADER_BYTES and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _refuse_non_safetensors(head: bytes, name: str) -> None:
    kind = sniff_format(head)
    if kind in ("pickle", "zip"):
        raise CheckpointError(
            f"{name} is a pickle-based file (torch.save / TorchScript); it is refused and was not "
            "loaded, because unpickling runs code. Convert it where you trust it: "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        )
    if kind != "safetensors":
        raise CheckpointError(f"{name} is not a safetensors file (unrecognized leading bytes)")


def _entry(key: str, value: Any, dtypes: dict[str, int]) -> TensorInfo:
    if not _KEY_PATTERN.fullmatch(key):
        raise CheckpointError(f"tensor name {key[:60]!r} is not allowed (letters, digits, '_' and '.')")
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"tensor {key!r}: malformed header entry")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in dtypes:
        raise CheckpointError(f"tensor {key!r}: dtype {dtype!r} not allowed; use one of "
                              f"{', '.join(dtypes)}")
    if isinstance(shape, list) and len(shape) > MAX_RANK:
        raise CheckpointError(f"tensor {key!r}: {len(shape)} dimensions; at most {MAX_RANK} are supported")
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**40 for d in shape):
        raise CheckpointError(f"tensor {key!r}: shape must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise CheckpointError(f"tensor {key!r}: data_offsets must be two non-negative integers")
    numel = 1
    for dim in shape:
        numel *= dim
    if offsets[1] - offsets[0] != numel * dtypes[dtype]:
        raise CheckpointError(f"tensor {key!r}: data_offsets do not match its shape and dtype")
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _parse(raw: bytes, buffer_len: int, dtypes: dict[str, int],
           ) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    try:
        header = load_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError("safetensors __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"checkpoint has {len(header)} tensors; at most {MAX_TENSORS} allowed")
    tensors = {key: _entry(key, value, dtypes) for key, value in header.items()}
    position = 0
    for info in sorted(tensors.values(), key=lambda t: t.begin):
        if info.begin != position:
            raise CheckpointError("safetensors data offsets overlap or leave gaps")
        position = info.end
    if position != buffer_len:
        raise CheckpointError(
            f"safetensors data section is {buffer_len} bytes but the header describes {position}"
        )
    return tensors, metadata


def read_header(source: str | Path | BinaryIO, name: str | None = None) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading tensor data into memory.

    Raises:
        CheckpointError: pickle-based or unknown format, truncated file, malformed header.
    """
    return read_header_and_metadata(source, name)[0]


def read_header_and_metadata(source: str | Path | BinaryIO, name: str | None = None,
                             dtypes: dict[str, int] = ALLOWED_DTYPES,
                             ) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """:func:`read_header`, and the header's ``__metadata__`` (string to string); ``dtypes`` are
    the tensor dtypes allowed (default: the floating ones of a checkpoint), with their widths.

    Raises:
        CheckpointError: pickle-based or unknown format, truncated file, malformed header.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return read_header_and_metadata(handle, name or Path(source).name, dtypes)
    label = name or "checkpoint"
    source.seek(0, 2)
    total = source.tell()
    source.seek(0)
    head = source.read(9)
    _refuse_non_safetensors(head, label)
    (size,) = struct.unpack("<Q", head[:8])
    if 8 + size > total:
        raise CheckpointError(f"{label}: header length {size} runs past the end of the file (truncated?)")
    source.seek(8)
    return _parse(source.read(size), total - 8 - size, dtypes)


def checkpoint_dtypes(arch: ArchSpec) -> dict[str, int]:
    """Tensor dtypes a checkpoint of ``arch`` may hold: the floating ones, and int64 where the
    family has BatchNorm counters (:meth:`ArchSpec.counter_keys`)."""
    return {**ALLOWED_DTYPES, "I64": 8} if arch.counter_keys() else ALLOWED_DTYPES


def _dtype_problem(tensors: dict[str, TensorInfo], arch: ArchSpec) -> str | None:
    counters = set(arch.counter_keys())
    floating = {info.dtype for key, info in tensors.items() if key not in counters}
    if "I64" in floating:
        return "only BatchNorm num_batches_tracked counters may be int64; the weights need a floating dtype"
    if len(floating) > 1:
        counts = {d: sum(1 for k, t in tensors.items() if t.dtype == d and k not in counters)
                  for d in sorted(floating)}
        shown = ", ".join(f"{d} ({n} tensor{'s' if n > 1 else ''})" for d, n in counts.items())
        return f"checkpoint mixes dtypes {shown}; save every weight in one floating dtype"
    return None


def check_uniform_dtype(tensors: dict[str, TensorInfo], arch: ArchSpec) -> None:
    """Refuse weights of more than one floating dtype (or int64 weights), as the engine loads them
    into one model of one dtype; BatchNorm's int64 counters are not weights.

    Raises:
        MixedDtypes: naming the dtypes found and how many tensors hold each.
    """
    problem = _dtype_problem(tensors, arch)
    if problem:
        raise MixedDtypes(problem)


def check_against_arch(tensors: dict[str, TensorInfo], arch: ArchSpec) -> None:
    """Check tensor names and shapes against the architecture.

    Raises:
        CheckpointError: listing missing, unexpected and mis-shaped tensors.
    """
    expected = arch.expected_shapes()
    counters = set(arch.counter_keys())
    problems = []
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected) - counters)
    for key in sorted(counters & set(tensors)):
        if tensors[key].dtype != "I64" or tensors[key].shape != ():
            problems.append(f"{key} must be an int64 scalar (BatchNorm's batch counter)")
    problem = _dtype_problem(tensors, arch)
    if problem:
        problems.append(problem)
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for key in sorted(set(expected) & set(tensors)):
        if tensors[key].shape != expected[key]:
            problems.append(f"{key} has shape {list(tensors[key].shape)}, the architecture needs "
                            f"{list(expected[key])}")
    if problems:
        raise CheckpointError("checkpoint does not match the architecture: " + "; ".join(problems))
