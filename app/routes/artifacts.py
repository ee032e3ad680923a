"""``/v1/models`` and ``/v1/datasets``: streamed uploads, metadata and deletion."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.deps import Services, ServicesDep, TenantDep
from app.errors import ApiError, storage_full
from app.quotas import check_storage_quota, too_many
from app.routes.contract import links_by_id
from app.routes.problems import V1_COMMON, problems
from app.routes.query import refuse_unknown_query
from app.schemas import DatasetList, DatasetPublic, ModelList, ModelPublic
from app.services.artifacts import UploadRequest, create_dataset, create_model, dataset_limits
from app.services.deletion import counted, delete_artifact
from models_store import ArtifactRecord, Records
from models_store.records import ArtifactKind

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["artifacts"], responses=V1_COMMON)
_ERRORS = problems(400, 408, 413, 415, 422, 507)


def _multipart(json_field: str, example: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["file", json_field],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            json_field: {"type": "string", "description": f"JSON, e.g. {example}"},
        },
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _upload_request(request: Request, services: Services, tenant: str) -> UploadRequest:
    """The upload's parts, once the tenant's upload rate and storage quota and the store's free
    space allow it (429 or 507 before anything is read, if not)."""
    settings = services.settings
    wait = services.limiter.hit("uploads", tenant, settings.rate_uploads_per_min, 60)
    if wait is not None:
        raise too_many("upload_rate_limited", f"more than {settings.rate_uploads_per_min} uploads per "
                       "minute; wait before the next", wait)
    length = request.headers.get("content-length", "")
    incoming = int(length) if length.isdigit() else 0
    check_storage_quota(services.records, settings, tenant, incoming)
    try:
        services.store.check_room(incoming)
    except OSError as exc:
        raise storage_full() from exc
    def within_quota(size: int) -> None:  # again on the size received: a chunked body declares none
        check_storage_quota(services.records, settings, tenant, size)

    return UploadRequest(request.stream(), request.headers.get("content-type"), length or None,
                         check_size=within_quota)


async def _counted(kind: str, upload: Awaitable[ArtifactRecord], services: Services) -> ArtifactRecord:
    """Await an upload, counting it in the metrics as accepted or by its error code."""
    try:
        record = await upload
    except ApiError as exc:
        services.metrics.uploads.labels(kind, exc.code).inc()
        raise
    services.metrics.uploads.labels(kind, "accepted").inc()
    services.metrics.upload_bytes.labels(kind).inc(record.size_bytes)
    return record


def model_public(record: ArtifactRecord) -> ModelPublic:
    """API view of a model record."""
    return ModelPublic(id=record.id, sha256=record.sha256, size_bytes=record.size_bytes,
                       filename=record.filename, architecture=record.architecture or {},
                       created_at=record.created_at)


def dataset_public(record: ArtifactRecord) -> DatasetPublic:
    """API view of a dataset record."""
    return DatasetPublic(
        id=record.id, sha256=record.sha256, size_bytes=record.size_bytes, filename=record.filename,
        format=record.format, schema=record.dataset_schema or {},
        n_rows=record.n_rows or 0, columns=record.columns or [], feature_names=record.feature_names or [],
        groups=record.groups or {}, created_at=record.created_at,
    )


@router.post("/models", status_code=201, response_model=ModelPublic,
             responses={**_ERRORS, 201: {"links": links_by_id("model_id", "getModel", "deleteModel")}},
             openapi_extra=_multipart("architecture", '{"type": "mlp", "in_features": 103, '
                                      '"hidden": [64, 32], "activation": "relu"}'))
async def upload_model(request: Request, services: ServicesDep, tenant: TenantDep) -> ModelPublic:
    """Upload a safetensors checkpoint with its architecture (multipart: ``file``, ``architecture``)."""
    upload = create_model(services.records, tenant, _upload_request(request, services, tenant),
                          services.settings.max_model_bytes)
    return model_public(await _counted("model", upload, services))


Sha256Query = Annotated[str | None, Query(
    pattern=r"^[0-9a-f]{64}$", description="Only artifacts whose uploaded bytes have this SHA-256 "
    "(lower-case hex): a client skips uploading a file the service already has.")]
LimitQuery = Annotated[int, Query(ge=1, le=200)]
_LIST_PARAMETERS = ("sha256", "limit", "offset")
OffsetQuery = Annotated[int, Query(ge=0)]


class _Page:
    """A page of artifact records and its position in the whole listing."""

    def __init__(self, records: Records, tenant: str, kind: ArtifactKind, limit: int, offset: int,
                 sha256: str | None) -> None:
        self.found, self.total = records.artifact_page(tenant, kind, limit, offset, sha256)
        self.limit, self.offset = limit, offset
        following = offset + len(self.found)
        self.next_offset = following if following < self.total else None


@router.get("/models", response_model=ModelList, responses=problems(422))
def list_models(request: Request, services: ServicesDep, tenant: TenantDep, sha256: Sha256Query = None,
                limit: LimitQuery = 50, offset: OffsetQuery = 0) -> ModelList:
    """The tenant's models ordered by id, a page at a time; ``sha256`` finds an earlier upload
    of the same file."""
    refuse_unknown_query(request, _LIST_PARAMETERS)
    page = _Page(services.records, tenant, "models", limit, offset, sha256)
    return ModelList(items=[model_public(record) for record in page.found], total=page.total,
                     limit=limit, offset=offset, next_offset=page.next_offset)


@router.get("/datasets", response_model=DatasetList, responses=problems(422))
def list_datasets(request: Request, services: ServicesDep, tenant: TenantDep, sha256: Sha256Query = None,
                  limit: LimitQuery = 50, offset: OffsetQuery = 0) -> DatasetList:
    """The tenant's datasets ordered by id, a page at a time; ``sha256`` finds an earlier upload
    of the same file (compare ``schema`` too: one file may be uploaded with several schemas)."""
    refuse_unknown_query(request, _LIST_PARAMETERS)
    page = _Page(services.records, tenant, "datasets", limit, offset, sha256)
    return DatasetList(items=[dataset_public(record) for record in page.found], total=page.total,
                       limit=limit, offset=offset, next_offset=page.next_offset)


@router.get("/models/{model_id}", response_model=ModelPublic, responses=problems(404))
def get_model(model_id: str, services: ServicesDep, tenant: TenantDep) -> ModelPublic:
    """An uploaded model's metadata."""
    record = services.records.get_artifact(tenant, "models", model_id)
    if record is None:
        raise ApiError(404, "not_found", f"no model {model_id[:40]}")
    return model_public(record)


@router.post("/datasets", status_code=201, response_model=DatasetPublic,
             responses={**_ERRORS, 201: {"links": links_by_id("dataset_id", "getDataset", "deleteDataset")}},
             openapi_extra=_multipart("schema", '{"label": "income", "sensitive": ["sex"]}'))
async def upload_dataset(request: Request, services: ServicesDep, tenant: TenantDep) -> DatasetPublic:
    """Upload a Parquet or CSV dataset with its schema (multipart: ``file``, ``schema``)."""
    upload = create_dataset(services.records, tenant, _upload_request(request, services, tenant),
                            services.settings.max_dataset_bytes, dataset_limits(services.settings))
    return dataset_public(await _counted("dataset", upload, services))


@router.get("/datasets/{dataset_id}", response_model=DatasetPublic, responses=problems(404))
def get_dataset(dataset_id: str, services: ServicesDep, tenant: TenantDep) -> DatasetPublic:
    """An uploaded dataset's metadata."""
    record = services.records.get_artifact(tenant, "datasets", dataset_id)
    if record is None:
        raise ApiError(404, "not_found", f"no dataset {dataset_id[:40]}")
    return dataset_public(record)


_DELETE_ERRORS = problems(404, 409)


@router.delete("/models/{model_id}", status_code=204, response_class=Response, responses=_DELETE_ERRORS)
def delete_model(model_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """Delete an uploaded model; 409 ``artifact_in_use`` while a queued or running job needs it.
    Finished jobs that used it keep their reports (which record its sha256)."""
    counted(services.metrics, "model", lambda: delete_artifact(services.records, tenant, "models", model_id))
    return Response(status_code=204)


@router.delete("/datasets/{dataset_id}", status_code=204, response_class=Response, responses=_DELETE_ERRORS)
def delete_dataset(dataset_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """Delete an uploaded dataset; 409 ``artifact_in_use`` while a queued or running job needs it."""
    counted(services.metrics, "dataset",
            lambda: delete_artifact(services.records, tenant, "datasets", dataset_id))
    return Response(status_code=204)
