"""The inputs of a job, loaded and cross-checked: architecture, checkpoint tensors, datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from workers.engine.errors import DatasetError, InputError
from workers.engine.io.architecture import ArchSpec
from workers.engine.io.checkpoint import load_checkpoint
from workers.engine.io.datasets import (
    Dataset,
    DatasetSchema,
    check_groups_present,
    load_dataset,
    read_columns,
    resolve_features,
)

__all__ = ["CorrectionInputs", "load_inputs"]


@dataclass
class CorrectionInputs:
    """Validated inputs of a job: architecture, checkpoint tensors and datasets."""

    arch: ArchSpec
    state: dict[str, torch.Tensor]
    train: Dataset
    audit: Dataset
    eval: Dataset | None
    notes: list[str] = field(default_factory=list)


def _with_sensitive_features(path: Path, schema: DatasetSchema, arch: ArchSpec,
                             notes: list[str]) -> DatasetSchema:
    """Let numeric sensitive columns be features when that is what makes the model's width fit."""
    if schema.features is not None:
        return schema
    columns = read_columns(path)
    features = resolve_features(columns, schema)
    if len(features) == arch.in_features:
        return schema
    widened = [c for c in columns if c != schema.label and (c in features or c in schema.sensitive)]
    if len(widened) == arch.in_features:
        notes.append(f"sensitive column(s) {list(schema.sensitive)} are also used as model features, "
                     f"since the model takes {arch.in_features} inputs")
        return DatasetSchema(schema.label, schema.sensitive, tuple(widened))
    raise InputError(
        f"the model takes {arch.in_features} input features but {path.name} has {len(features)} "
        f"feature columns (all but label {schema.label!r} and sensitive {list(schema.sensitive)}); "
        "name the feature columns explicitly (schema 'features' / --features)"
    )


def load_inputs(model_path: Path, arch: ArchSpec, train: tuple[Path, DatasetSchema],
                audit: tuple[Path, DatasetSchema], eval: tuple[Path, DatasetSchema] | None,
                sensitive_attribute: str | None) -> CorrectionInputs:
    """Load and cross-check the checkpoint and datasets of a job.

    Raises:
        InputError: (and its CheckpointError/DatasetError subclasses) naming what to change.
    """
    state = load_checkpoint(model_path, arch)
    notes: list[str] = []
    loaded: dict[str, Dataset] = {}
    for role, pair in (("train", train), ("audit", audit), ("eval", eval)):
        if pair is None:
            continue
        path, schema = pair
        schema = _with_sensitive_features(Path(path), schema, arch, notes)
        loaded[role] = load_dataset(path, schema, role)
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
    return CorrectionInputs(arch, state, loaded["train"], loaded["audit"], loaded.get("eval"),
                            sorted(set(notes)))
