"""Uploading models and datasets: stream, sniff, validate, then publish (or keep nothing).

Pickle-based and unknown formats are refused (415) from their leading bytes and never
deserialized; a safetensors header is parsed by our own strict reader and checked against the
declared architecture (422 with what is wrong), and its data read in bounded chunks to refuse
mixed dtypes and NaN/Inf weights; datasets are measured from their metadata against the operator's
caps (413 ``dataset_too_large`` before anything is decoded) and then validated against their
schema a chunk at a time with the engine's own checks. All of it runs in a worker thread, never on
the event loop. Only then are the bytes committed under a key we generate.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import anyio

from app import memory
from app.errors import ApiError
from app.services.uploads import Upload, read_multipart
from models_store import ArtifactRecord, Records, StagedObject
from models_store.keys import new_id, object_key
from models_store.records import utcnow
from workers.engine.errors import InputError
from workers.engine.io.architecture import parse_arch
from workers.engine.io.dataset_limits import DatasetLimits, DatasetTooLarge
from workers.engine.io.dataset_scan import scan_dataset
from workers.engine.io.datasets import parse_schema
from workers.engine.io.identity import check_recorded_architecture
from workers.engine.io.json_input import load_json
from workers.engine.io.safetensors_data import check_finite_weights
from workers.engine.io.safetensors_header import (
    MixedDtypes,
    NonFiniteWeights,
    check_against_arch,
    check_uniform_dtype,
    checkpoint_dtypes,
    read_header_and_metadata,
    sniff_format,
)
from workers.settings import ServiceSettings

__all__ = ["UploadRequest", "create_dataset", "create_model", "dataset_limits"]

MAX_GROUPS_SHOWN = 100


class UploadRequest:
    """The parts of an HTTP request an upload needs (no framework types)."""

    def __init__(self, stream: AsyncIterator[bytes], content_type: str | None,
                 content_length: str | None, check_size: Callable[[int], None] | None = None) -> None:
        self.stream, self.content_type, self.content_length = stream, content_type, content_length
        self.check_size = check_size
        """Called with the file's size once received (the tenant's storage quota); raises to refuse."""


def _invalid(field: str, message: str, code: str = "validation_error") -> ApiError:
    return ApiError(422, code, f"{field}: {message}", errors=[{"field": field, "message": message}])


def _json_field(upload: Upload, name: str, example: str) -> Any:
    raw = upload.fields.get(name)
    if raw is None:
        raise _invalid(name, f"missing form field; send it as JSON, e.g. {example}")
    try:
        return load_json(raw)
    except ValueError as exc:
        raise _invalid(name, f"not valid JSON ({exc})") from exc


def _refuse_pickle(head: bytes) -> str:
    kind = sniff_format(head)
    if kind in ("pickle", "zip"):
        raise ApiError(415, "pickle_refused", "the file is pickle-based (torch.save, TorchScript or a zip "
                       "archive); it was refused and never loaded, because unpickling runs code. Convert "
                       "it where you trust it: safetensors.torch.save_file(model.state_dict(), path)")
    return kind


async def _receive(request: UploadRequest, staged: StagedObject, limit: int) -> Upload:
    upload = await read_multipart(request.stream, request.content_type, request.content_length,
                                  staged, "file", limit)
    if not upload.has_file:
        raise _invalid("file", "missing file part")
    if staged.size == 0:
        raise _invalid("file", "the file is empty")
    if request.check_size is not None:
        request.check_size(staged.size)
    return upload


def dataset_limits(settings: ServiceSettings) -> DatasetLimits:
    """The operator's dataset caps."""
    return DatasetLimits(max_dataset_rows=settings.max_dataset_rows,
                         max_dataset_columns=settings.max_dataset_columns,
                         max_dataset_decoded_bytes=settings.max_dataset_decoded_bytes)


def _check_checkpoint(path: Path, architecture: Any) -> dict[str, Any]:
    """Header, dtypes, architecture and finiteness of a staged checkpoint (runs in a worker thread)."""
    try:
        arch = parse_arch(architecture)
    except InputError as exc:
        raise _invalid("architecture", str(exc).removeprefix("architecture: ")) from exc
    try:
        tensors, metadata = read_header_and_metadata(path, "file", checkpoint_dtypes(arch))
    except InputError as exc:
        raise _invalid("file", str(exc), "invalid_safetensors") from exc
    try:
        check_uniform_dtype(tensors, arch)
    except MixedDtypes as exc:
        raise _invalid("file", str(exc), exc.code) from exc
    try:
        check_against_arch(tensors, arch)
        check_recorded_architecture(metadata, arch)
    except InputError as exc:
        raise _invalid("file", str(exc), "architecture_mismatch") from exc
    try:
        check_finite_weights(path, tensors)
    except NonFiniteWeights as exc:
        raise _invalid("file", str(exc), exc.code) from exc
    return arch.to_dict()


async def create_model(records: Records, tenant: str, request: UploadRequest, limit: int) -> ArtifactRecord:
    """Receive, validate and store a checkpoint.

    Raises:
        ApiError: 413, 415, 422 (nothing is kept).
    """
    with records.store.stage(limit) as staged:
        upload = await _receive(request, staged, limit)
        if _refuse_pickle(upload.head) != "safetensors":
            raise ApiError(415, "unsupported_format", "the file is not a safetensors checkpoint; only "
                           "safetensors is accepted (.pt/.pth/.bin/.ckpt, TorchScript and ONNX are not)")
        raw = _json_field(upload, "architecture",
                          '{"type": "mlp", "in_features": 10, "hidden": [32], "activation": "relu"}')
        architecture = await anyio.to_thread.run_sync(_check_checkpoint, staged.path, raw)
        record = ArtifactRecord(
            id=new_id(), tenant=tenant, kind="models", data_name="model.safetensors", format="safetensors",
            sha256=staged.sha256, size_bytes=staged.size, filename=upload.filename, created_at=utcnow(),
            architecture=architecture,
        )
        # In a thread: on S3 the commit is the (multipart) upload, not a rename.
        await anyio.to_thread.run_sync(staged.commit, records.data_key(record))
    await anyio.to_thread.run_sync(records.put_artifact, record)
    return record


def _dataset_format(head: bytes) -> Literal["parquet", "csv", "safetensors"]:
    if head[:4] == b"PAR1":
        return "parquet"
    if sniff_format(head) == "safetensors":
        return "safetensors"  # a tensor dataset (x, label and group vectors); its header is checked next
    _refuse_pickle(head)
    text_ok = b"\x00" not in head
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text_ok = False
    if not text_ok:
        raise ApiError(415, "unsupported_format", "datasets are accepted as Parquet, as UTF-8 CSV with "
                       "a header row, or as a safetensors tensor dataset; this file is none of these")
    return "csv"


def _inspect_dataset(path: Path, schema_raw: Any, limits: DatasetLimits) -> dict[str, Any]:
    """Schema check, the caps from the file's metadata, then the engine's validation a chunk at a
    time (runs in a worker thread; the memory it used is given back after, app/memory.py)."""
    try:
        schema = parse_schema(schema_raw)
    except InputError as exc:
        raise _invalid("schema", str(exc).removeprefix("schema: ")) from exc
    memory.use_system_pool()
    try:
        found = scan_dataset(path, schema, "file", limits, chunk_bytes=memory.SCAN_CHUNK_BYTES)
    except DatasetTooLarge as exc:
        raise ApiError(413, exc.code, f"file: {exc}",
                       errors=[{"field": "file", "message": str(exc)}]) from exc
    except InputError as exc:
        raise _invalid("file", str(exc), "invalid_dataset") from exc
    finally:
        memory.give_back()
    groups = {c: v[:MAX_GROUPS_SHOWN] for c, v in found.groups.items()}
    return {"dataset_schema": schema.to_dict(), "columns": found.columns, "n_rows": found.n_rows,
            "feature_names": found.feature_names, "groups": groups}


async def create_dataset(records: Records, tenant: str, request: UploadRequest, limit: int,
                         limits: DatasetLimits | None = None) -> ArtifactRecord:
    """Receive, validate and store a dataset; ``limits`` are the caps on rows, columns and decoded
    size (default :class:`DatasetLimits`).

    Raises:
        ApiError: 413 (upload or dataset too large), 415, 422 (nothing is kept).
    """
    with records.store.stage(limit) as staged:
        upload = await _receive(request, staged, limit)
        fmt = _dataset_format(upload.head)
        schema_raw = _json_field(upload, "schema", '{"label": "y", "sensitive": ["sex"]}')
        path = staged.path
        found = await anyio.to_thread.run_sync(_inspect_dataset, path, schema_raw, limits or DatasetLimits())
        record = ArtifactRecord(
            id=new_id(), tenant=tenant, kind="datasets", data_name=f"data.{fmt}", format=fmt,
            sha256=staged.sha256, size_bytes=staged.size, filename=upload.filename, created_at=utcnow(),
            **found,
        )
        key = object_key(tenant, "datasets", record.id, record.data_name)
        await anyio.to_thread.run_sync(staged.commit, key)
    await anyio.to_thread.run_sync(records.put_artifact, record)
    return record
