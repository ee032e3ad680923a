"""Tensor datasets: a safetensors file of arrays, for images and exported embeddings.

A file holds ``x`` (float, ``[n, D]`` features or ``[n, C, H, W]`` images), the label vector
(0/1, any integer, bool or float dtype; the schema's ``label`` names it, e.g. ``y``), one
integer vector per sensitive attribute (the schema's ``sensitive``), and optionally the user's
model's logits (the schema's ``reference_logits``). Its ``__metadata__`` may carry, under the key
``softunlearn.dataset``, a JSON object with ``feature_names`` (for ``[n, D]``; default ``x0`` …)
and ``groups`` (``{attribute: [label of code 0, label of code 1, …]}``; default the codes).

The header is parsed and checked in pure Python before any data is read (shapes, dtypes,
offsets); arrays are then read with ``safetensors.numpy`` — never pickle, never
``np.load(allow_pickle=True)``. Torch-free: the HTTP front end validates uploads with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from workers.engine.errors import DatasetError, InputError
from workers.engine.io.feature_matrix import BATCH_ROWS, RowTransform, transform_rows
from workers.engine.io.json_input import load_json
from workers.engine.io.safetensors_header import (
    ALLOWED_DTYPES,
    TensorInfo,
    read_header_and_metadata,
    sniff_format,
)

__all__ = ["DATASET_DTYPES", "FEATURES_TENSOR", "METADATA_KEY", "is_tensor_dataset", "read_tensor_dataset",
           "tensor_columns"]

DATASET_DTYPES = {**ALLOWED_DTYPES, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1}
FEATURES_TENSOR = "x"
METADATA_KEY = "softunlearn.dataset"


def is_tensor_dataset(path: str | Path) -> bool:
    """Whether the file is a safetensors file (by its first bytes)."""
    with open(path, "rb") as handle:
        return sniff_format(handle.read(9)) == "safetensors"


def _header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    try:
        tensors, metadata = read_header_and_metadata(path, path.name, DATASET_DTYPES)
    except InputError as exc:
        raise DatasetError(str(exc)) from exc
    if FEATURES_TENSOR not in tensors:
        raise DatasetError(f"{path.name}: a tensor dataset needs a tensor named {FEATURES_TENSOR!r} (the "
                           f"features); it has {sorted(tensors)[:10]}")
    try:
        described = load_json(metadata.get(METADATA_KEY, "{}"))
    except ValueError as exc:
        raise DatasetError(f"{path.name}: metadata {METADATA_KEY!r} is not valid JSON: {exc}") from exc
    if not isinstance(described, dict):
        raise DatasetError(f"{path.name}: metadata {METADATA_KEY!r} must be a JSON object")
    return tensors, described


def _feature_names(path: Path, x: TensorInfo, described: dict[str, Any]) -> list[str]:
    if len(x.shape) == 4:
        return [f"{FEATURES_TENSOR}[{','.join(map(str, x.shape[1:]))}]"]
    if len(x.shape) != 2:
        raise DatasetError(f"{path.name}: {FEATURES_TENSOR!r} must be [n, D] features or [n, C, H, W] "
                           f"images; it has shape {list(x.shape)}")
    names = described.get("feature_names", [f"{FEATURES_TENSOR}{i}" for i in range(x.shape[1])])
    if (not isinstance(names, list) or len(names) != x.shape[1] or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n for n in names)):
        raise DatasetError(f"{path.name}: metadata feature_names must list {x.shape[1]} distinct names")
    return names


def tensor_columns(path: str | Path) -> list[str]:
    """The "columns" of a tensor dataset: the feature names of ``x``, then its other 1-D tensors."""
    path = Path(path)
    tensors, described = _header(path)
    others = [name for name, info in tensors.items() if name != FEATURES_TENSOR and len(info.shape) == 1]
    return [*_feature_names(path, tensors[FEATURES_TENSOR], described), *others]


def _vector(arrays: dict[str, np.ndarray], name: str, n: int, path: Path) -> np.ndarray:
    if name not in arrays:
        raise DatasetError(f"{path.name}: no tensor named {name!r}; it has {sorted(arrays)[:10]}")
    values = arrays[name]
    if values.shape != (n,):
        raise DatasetError(f"{path.name}: tensor {name!r} must have shape [{n}] (one value per row of "
                           f"{FEATURES_TENSOR!r}); it has {list(values.shape)}")
    return values


def _groups(values: np.ndarray, attribute: str, described: dict[str, Any], path: Path) -> np.ndarray:
    if values.dtype.kind not in "iub":
        raise DatasetError(f"{path.name}: sensitive tensor {attribute!r} must hold integer group codes")
    labels = described.get("groups", {}).get(attribute)
    codes = values.astype(np.int64)
    if labels is None:
        return codes.astype(str).astype(object)
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels) \
            or codes.min() < 0 or codes.max() >= len(labels):
        raise DatasetError(f"{path.name}: metadata groups[{attribute!r}] must list a label for every code "
                           f"0..{int(codes.max())}")
    return np.asarray(labels, dtype=object)[codes]


def _finite(values: np.ndarray, what: str, path: Path) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if not np.isfinite(out).all():
        raise DatasetError(f"{path.name}: NaN or Inf in {what}; impute or drop those rows")
    return out


def _features(x: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """``x`` in ``dtype``, converted (and checked finite) block by block into one array."""
    out = x if x.dtype == dtype and x.flags.c_contiguous else np.empty(x.shape, dtype=dtype)
    for start in range(0, x.shape[0], BATCH_ROWS):
        block = slice(start, start + BATCH_ROWS)
        if out is not x:
            out[block] = x[block]
        if not np.isfinite(out[block]).all():
            raise DatasetError(f"{path.name}: NaN or Inf in tensor {FEATURES_TENSOR!r}; impute or drop those "
                               "rows")
    return out


_DIRECT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
"""Feature dtypes read straight from the file into their array (bfloat16 has no numpy dtype)."""


def _read_arrays(path: Path, tensors: dict[str, TensorInfo], with_features: bool = True,
                 ) -> dict[str, np.ndarray]:
    """Every tensor of the file (``x`` only ``with_features``); ``x`` read straight into one
    array (no file-sized buffer beside it, which ``safetensors.numpy.load_file`` holds while it
    copies)."""
    info = tensors[FEATURES_TENSOR]
    if info.dtype not in _DIRECT_DTYPES:
        return load_file(str(path))
    with safe_open(str(path), framework="numpy") as handle:
        arrays: dict[str, np.ndarray] = {name: handle.get_tensor(name) for name in handle.keys()  # noqa: SIM118
                                         if name != FEATURES_TENSOR}
    if not with_features:
        return arrays
    x = np.empty(info.shape, dtype=np.dtype(_DIRECT_DTYPES[info.dtype]))
    with open(path, "rb") as raw:
        header_size = int.from_bytes(raw.read(8), "little")
        raw.seek(8 + header_size + info.begin)
        if raw.readinto(x.data.cast("B")) != info.end - info.begin:
            raise DatasetError(f"{path.name}: tensor {FEATURES_TENSOR!r} is cut short")
    arrays[FEATURES_TENSOR] = x.astype(x.dtype.newbyteorder("="), copy=False)
    return arrays


def _streamed_features(path: Path, info: TensorInfo, columns: list[int] | None, dtype: np.dtype,
                       transform: RowTransform) -> np.ndarray:
    """``transform`` of ``x``'s rows (``columns`` of them, in that order), read from the file
    block by block: only one block of the inputs is ever held."""
    stored = np.dtype(_DIRECT_DTYPES[info.dtype])
    rows, row_shape = info.shape[0], tuple(info.shape[1:])
    out = np.empty((rows, transform.width), dtype=dtype)
    scratch = np.empty((min(rows, BATCH_ROWS), *row_shape), dtype=stored)
    with open(path, "rb") as raw:
        header_size = int.from_bytes(raw.read(8), "little")
        raw.seek(8 + header_size + info.begin)
        for start in range(0, rows, BATCH_ROWS):
            block = scratch[:min(BATCH_ROWS, rows - start)]
            if raw.readinto(block.data.cast("B")) != block.nbytes:
                raise DatasetError(f"{path.name}: tensor {FEATURES_TENSOR!r} is cut short")
            values = block.astype(stored.newbyteorder("="), copy=False)
            values = (values if columns is None else values[:, columns]).astype(dtype, copy=False)
            if not np.isfinite(values).all():
                raise DatasetError(f"{path.name}: NaN or Inf in tensor {FEATURES_TENSOR!r}; impute or drop "
                                   "those rows")
            out[start:start + block.shape[0]] = transform(values)
    return out


def _selected_columns(path: Path, names: list[str], features: list[str] | None, two_d: bool,
                      ) -> tuple[list[int] | None, list[str]]:
    """The positions of ``features`` among ``x``'s columns (None: all, as stored) and the names."""
    if features is None or not two_d or list(features) == names:
        return None, names
    missing = [c for c in features if c not in names]
    if missing:
        raise DatasetError(f"{path.name}: feature(s) {missing[:10]} are not among x's feature_names")
    return [names.index(c) for c in features], list(features)


def read_tensor_dataset(path: str | Path, label: str, sensitive: tuple[str, ...], features: list[str] | None,
                        reference: str | None, dtype: np.dtype | None = None,
                        transform: RowTransform | None = None) -> dict[str, Any]:
    """The validated arrays of a tensor dataset: ``features`` (in ``dtype``, default float64;
    the named columns of a 2-D ``x`` in that order, else all of ``x``; no copy when ``x`` is
    stored in that dtype already; with ``transform``, the transformed rows, ``x`` read block
    by block), ``feature_names``, ``labels``, ``sensitive``, ``reference_logits``.

    Raises:
        DatasetError: what is wrong and how to fix it.
    """
    path = Path(path)
    wanted = np.dtype(np.float64) if dtype is None else dtype
    tensors, described = _header(path)
    info = tensors[FEATURES_TENSOR]
    names = _feature_names(path, info, described)
    streamed = transform is not None and info.dtype in _DIRECT_DTYPES
    arrays = _read_arrays(path, tensors, with_features=not streamed)
    n = info.shape[0]
    if n == 0:
        raise DatasetError(f"{path.name}: the file has no rows")
    columns, names = _selected_columns(path, names, features, len(info.shape) == 2)
    if streamed:
        assert transform is not None
        matrix = _streamed_features(path, info, columns, wanted, transform)
    else:
        x = arrays[FEATURES_TENSOR]
        matrix = _features(x if columns is None else x[:, columns], wanted, path)
        if transform is not None:
            matrix = transform_rows(matrix, transform)
    y = _vector(arrays, label, n, path)
    y = _finite(y, f"label tensor {label!r}", path)
    if not np.isin(y, (0.0, 1.0)).all():
        raise DatasetError(f"{path.name}: label tensor {label!r} must hold only 0 and 1")
    ref = None if reference is None else _finite(_vector(arrays, reference, n, path), f"tensor {reference!r}",
                                                 path)
    return {
        "features": matrix,
        "feature_names": tuple(names),
        "labels": y,
        "sensitive": {a: _groups(_vector(arrays, a, n, path), a, described, path) for a in sensitive},
        "reference_logits": ref,
    }
