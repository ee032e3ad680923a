"""The inputs of a job, loaded and cross-checked: architecture, checkpoint tensors, datasets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workers.engine.errors import DatasetError, InputError
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.checkpoint import file_sha256, read_checkpoint
from workers.engine.io.dataset_limits import DatasetLimits, measure_dataset
from workers.engine.io.datasets import (
    REFERENCE_COLUMN,
    Dataset,
    DatasetSchema,
    check_groups_present,
    load_dataset,
    read_columns,
    resolve_features,
)
from workers.engine.io.feature_matrix import RowTransform
from workers.engine.io.identity import recorded_feature_names
from workers.engine.io.memory_plan import SplitShape, check_memory, estimate_memory
from workers.engine.io.tensor_datasets import is_tensor_dataset

__all__ = ["CorrectionInputs", "TrainEmbedding", "load_inputs", "model_feature_dtype"]

TrainEmbedding = Callable[[ArchSpec, dict[str, torch.Tensor]], RowTransform | None]
"""Given the architecture and the checkpoint, what the training rows are read through (the
model's extractor, for a job that never needs the inputs again), or None for the inputs."""


@dataclass
class CorrectionInputs:
    """Validated inputs of a job: architecture, checkpoint tensors and datasets."""

    arch: ArchSpec
    state: dict[str, torch.Tensor]
    train: Dataset
    audit: Dataset
    eval: Dataset | None
    notes: list[str] = field(default_factory=list)
    model_sha256: str | None = None
    """sha256 of the checkpoint file (the corrected checkpoint records it as its parent)."""
    dataset_sha256: dict[str, str] = field(default_factory=dict)
    """sha256 of each dataset file, by role (train, audit, eval)."""


def _with_sensitive_features(path: Path, columns: list[str], schema: DatasetSchema, arch: ArchSpec,
                             notes: list[str]) -> DatasetSchema:
    """Let numeric sensitive columns be features when that is what makes the model's width fit."""
    if schema.features is not None or is_tensor_dataset(path) or arch.image_shape is not None:
        return schema
    features = resolve_features(columns, schema)
    if len(features) == arch.in_features:
        return schema
    widened = [c for c in columns if c != schema.label and (c in features or c in schema.sensitive)]
    if len(widened) == arch.in_features:
        notes.append(f"sensitive column(s) {list(schema.sensitive)} are also used as model features, "
                     f"since the model takes {arch.in_features} inputs")
        return dataclasses.replace(schema, features=tuple(widened))
    raise InputError(
        f"the model takes {arch.in_features} input features but {path.name} has {len(features)} "
        f"feature columns (all but label {schema.label!r} and sensitive {list(schema.sensitive)}); "
        "name the feature columns explicitly (schema 'features' / --features)"
    )


def _check_row_shape(name: str, shape: tuple[int, ...], arch: ArchSpec) -> None:
    """The model's input shape must be the data's row shape."""
    if arch.image_shape is not None:
        if len(shape) != 3 or shape != arch.image_shape:
            what = f"images of shape {list(shape)}" if len(shape) == 3 else f"{shape[0]} feature columns"
            expected = ", ".join(map(str, arch.image_shape))
            raise DatasetError(f"{name}: the {arch.family} takes [n, {expected}] "
                               f"images (architecture.input_shape) but the data has {what}; write x as a "
                               "[n, C, H, W] tensor dataset (safetensors) of that shape, or fix input_shape")
        return
    if len(shape) != 1:
        raise DatasetError(f"{name}: the features are images of shape {list(shape)}; "
                           f"a {arch.family} takes [n, {arch.in_features}] features: flatten x to "
                           "[n, C·H·W], use a cnn or resnet architecture, or export embeddings for a "
                           "linear_head")
    if shape[0] != arch.in_features:
        raise DatasetError(f"{name}: the model takes {arch.in_features} input features but the data "
                           f"has {shape[0]}; name the feature columns (schema 'features')")


def _check_width(data: Dataset, arch: ArchSpec) -> Dataset:
    """The model's input shape must be the data's row shape (rows read through the extractor
    were checked block by block before it ran: :class:`_ShapeChecked`)."""
    if not data.embedded:
        _check_row_shape(data.name, tuple(data.features.shape[1:]), arch)
    return data


@dataclass(frozen=True)
class _ShapeChecked:
    """A row transform that first checks each block's row shape against the model's input."""

    transform: RowTransform
    arch: ArchSpec
    name: str

    @property
    def width(self) -> int:
        return self.transform.width

    def __call__(self, block: np.ndarray) -> np.ndarray:
        _check_row_shape(self.name, tuple(block.shape[1:]), self.arch)
        return self.transform(block)


def _by_recorded_names(path: Path, columns: list[str], schema: DatasetSchema, recorded: tuple[str, ...],
                       notes: list[str]) -> DatasetSchema:
    """Match feature columns by the names the checkpoint records, never by position."""
    if schema.features is not None and set(schema.features) != set(recorded):
        missing = [c for c in recorded if c not in schema.features]
        extra = [c for c in schema.features if c not in recorded]
        raise DatasetError(f"the checkpoint records its {len(recorded)} feature columns; schema.features "
                           f"differs (not named: {missing[:10]}; not the model's: {extra[:10]}); drop "
                           "schema.features or list the model's columns")
    absent = [c for c in recorded if c not in columns]
    if absent:
        raise DatasetError(f"{path.name}: feature column(s) {absent[:10]} that the checkpoint records are "
                           "missing (renamed?); the model reads its columns by name")
    if schema.features is not None and tuple(schema.features) != recorded:
        notes.append("feature columns were matched by the names the checkpoint records, not by the "
                     "order schema.features lists them")
    elif [c for c in columns if c in recorded] != list(recorded):
        notes.append("feature columns were matched by the names the checkpoint records (the files hold "
                     "them in another order)")
    return dataclasses.replace(schema, features=recorded)


def _resolve_schema(path: Path, schema: DatasetSchema, arch: ArchSpec, recorded: tuple[str, ...] | None,
                    notes: list[str]) -> DatasetSchema:
    columns = read_columns(path)
    if schema.reference_logits is None and REFERENCE_COLUMN in columns \
            and REFERENCE_COLUMN not in (schema.features or ()):
        schema = dataclasses.replace(schema, reference_logits=REFERENCE_COLUMN)
    if recorded is not None:
        return _by_recorded_names(path, columns, schema, recorded, notes)
    return _with_sensitive_features(path, columns, schema, arch, notes)


def model_feature_dtype(state: dict[str, torch.Tensor]) -> np.dtype:
    """The dtype the datasets' features are held in: the checkpoint's float32 or float64 (a
    narrower float checkpoint gets float32 features; the network casts each batch)."""
    weights = next((v for v in state.values() if v.is_floating_point()), None)
    double = weights is not None and weights.dtype == torch.float64
    return np.dtype(np.float64) if double else np.dtype(np.float32)


def _check_memory(arch: ArchSpec, dtype: np.dtype, splits: list[tuple[str, Path, DatasetSchema]],
                  budget: int | None, embedded_train: bool) -> None:
    """Refuse, from the files' headers alone, a job that cannot fit ``budget`` bytes."""
    if budget is None:
        return
    limits = DatasetLimits(max_dataset_rows=1 << 62, max_dataset_columns=1 << 62,
                           max_dataset_decoded_bytes=1 << 62)
    shapes = [SplitShape(role, measure_dataset(path, schema, limits).rows, arch.flat_features,
                         len(schema.sensitive)) for role, path, schema in splits]
    check_memory(estimate_memory(shapes, arch.head_in_features, bool(arch.head_index), dtype.itemsize,
                                 embedded_train=embedded_train), budget)


def load_inputs(model_path: Path, arch: ArchSpec, train: tuple[Path, DatasetSchema],
                audit: tuple[Path, DatasetSchema], eval: tuple[Path, DatasetSchema] | None,
                sensitive_attribute: str | None, memory_budget: int | None = None,
                embed_train: TrainEmbedding | None = None) -> CorrectionInputs:
    """Load and cross-check the checkpoint and datasets of a job.

    ``memory_budget`` (bytes; None: no check) refuses, before any dataset is read, a job whose
    estimated peak (:mod:`~workers.engine.io.memory_plan`) exceeds it. ``embed_train``: the
    training rows are read through the transform it gives for this checkpoint (when it gives
    one), batch by batch, so that only the transformed rows are held (``train.embedded``).

    Raises:
        InputError: (and its CheckpointError/DatasetError subclasses) naming what to change;
            :class:`~workers.engine.io.memory_plan.MemoryBudgetExceeded` over the budget.
    """
    checkpoint = read_checkpoint(model_path, arch)
    dtype = model_feature_dtype(checkpoint.state)
    recorded = recorded_feature_names(checkpoint.metadata)
    notes: list[str] = []
    loaded: dict[str, Dataset] = {}
    resolved = [(role, Path(pair[0]), _resolve_schema(Path(pair[0]), pair[1], arch, recorded, notes))
                for role, pair in (("train", train), ("audit", audit), ("eval", eval)) if pair is not None]
    embedding = embed_train(arch, checkpoint.state) if embed_train is not None else None
    transform = None if embedding is None else _ShapeChecked(embedding, arch, "train")
    _check_memory(arch, dtype, resolved, memory_budget, transform is not None)
    # The files' digests are computed on a thread beside the reads (hashlib and file reads let go
    # of the GIL): at 1 M × 512 float32 hashing alone is ≈ 1.8 s of the read phase.
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-sha256")
    try:
        digests = {role: hashing.submit(file_sha256, path) for role, path, _ in resolved}
        for role, path, schema in resolved:
            loaded[role] = _check_width(load_dataset(path, schema, role, dtype,
                                                     transform if role == "train" else None), arch)
        hashes = {role: digest.result() for role, digest in digests.items()}
    finally:
        hashing.shutdown(wait=False, cancel_futures=True)
    reference = loaded["train"]
    for role, data in loaded.items():
        if data.feature_names != reference.feature_names:
            raise DatasetError(f"{role}: feature columns differ from train's; every split needs the "
                               "same feature columns in the same order")
    if sensitive_attribute is not None:
        if sensitive_attribute not in reference.sensitive:
            raise DatasetError(f"sensitive attribute {sensitive_attribute!r} is not a sensitive column "
                               f"of the schema; it lists {sorted(reference.sensitive)}")
        for data in loaded.values():
            check_groups_present(reference, data, sensitive_attribute)
    return CorrectionInputs(arch, checkpoint.state, loaded["train"], loaded["audit"], loaded.get("eval"),
                            sorted(set(notes)), checkpoint.sha256, hashes)
