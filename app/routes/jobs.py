"""``/v1/jobs``: submit, inspect, list, cancel, delete, and download outputs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.deps import ServicesDep, TenantDep
from app.routes.contract import REPORT_REF, links_by_id
from app.routes.problems import V1_COMMON, problems
from app.routes.query import refuse_unknown_query
from app.schemas import FrontierPublic, JobCreate, JobList, JobPublic
from app.services import jobs as service
from app.services.deletion import counted
from app.services.deletion import delete_job as delete_finished_job

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1_COMMON)
_NOT_FOUND = problems(404)
_OUTPUT_ERRORS = problems(404, 409)


_SUBMITTED = {
    "headers": {"Location": {"description": "The job's URL, `/v1/jobs/{id}`.", "required": True,
                             "schema": {"type": "string"}}},
    "links": links_by_id("job_id", "getJob", "cancelJob", "deleteJob", "getJobReport", "getJobReportHtml",
                         "getJobFrontier", "getJobWeights", "getJobModel"),
}


@router.post("", status_code=202, response_model=JobPublic,
             responses={**problems(400, 408, 409, 413, 422, 507), 202: _SUBMITTED})
def create_job(
    body: JobCreate, response: Response, services: ServicesDep, tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobPublic:
    """Submit a correction job; 202 with ``Location``. The same Idempotency-Key and body return
    the same job; the same key with another body is a 409."""
    record, _created = service.submit_job(services.records, services.redis, services.settings, tenant,
                                          body, idempotency_key)
    services.metrics.jobs.labels(record.queue).inc()
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return service.job_public(record)


_LIST_PARAMETERS = ("limit", "offset", "status")


@router.get("", response_model=JobList, responses=problems(422))
def list_jobs(
    request: Request, services: ServicesDep, tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None,
) -> JobList:
    """The tenant's jobs, newest first, a page at a time."""
    refuse_unknown_query(request, _LIST_PARAMETERS)
    return service.list_jobs(services.records, tenant, limit, offset, status)


@router.get("/{job_id}", response_model=JobPublic, responses=_NOT_FOUND)
def get_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobPublic:
    """A job's status, stage and progress."""
    return service.job_public(service.get_job(services.records, services.redis, services.settings,
                                              tenant, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic, responses=problems(404, 409, 507))
def cancel_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one by stopping its worker process."""
    return service.job_public(service.cancel_job(services.records, services.redis, services.settings,
                                                 tenant, job_id))


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_OUTPUT_ERRORS)
def delete_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """Delete a finished job with its outputs; 409 ``job_not_finished`` while it is queued or
    running (cancel it first). Its Idempotency-Key is freed: the same POST again makes a new job."""
    counted(services.metrics, "job", lambda: delete_finished_job(
        services.records, services.redis, services.settings, tenant, job_id))
    return Response(status_code=204)


def _output(services: ServicesDep, tenant: str, job_id: str, output: str) -> str:
    return service.output_key(services.records, services.redis, services.settings, tenant, job_id, output)


REPORT_PAGE_HEADERS = {
    # The page is self-contained: inline styles and inline SVG, no scripts, no fetches, no frames.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
OUTPUT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


@router.get("/{job_id}/report", response_class=JSONResponse,
            responses={**_OUTPUT_ERRORS, 200: {
                "content": {"application/json": {"schema": {"$ref": REPORT_REF}}},
                "description": "The report; its JSON Schema is workers/reporting/report.schema.json."}})
def get_job_report(job_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """The before/after report (JSON): fairness, robustness and utility on audit and eval."""
    key = _output(services, tenant, job_id, "report")
    return Response(services.store.get_bytes(key), media_type="application/json", headers=OUTPUT_HEADERS)


@router.get("/{job_id}/frontier", response_model=FrontierPublic, responses=_OUTPUT_ERRORS)
def get_job_frontier(job_id: str, services: ServicesDep, tenant: TenantDep,
                     response: Response) -> FrontierPublic:
    """The trade-off frontier of the report (``report["frontier"]``): one point per reduction ρ of
    the job's scheme and per hard-removal share k, each with the before/after metric keys on
    audit and eval, and how the points were made (``frontier_info``)."""
    key = _output(services, tenant, job_id, "report")
    response.headers.update(OUTPUT_HEADERS)
    return service.frontier_public(job_id, services.store.get_bytes(key))


@router.get("/{job_id}/report.html", responses={**_OUTPUT_ERRORS, 200: {"content": {"text/html": {}}}})
def get_job_report_html(job_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    """The before/after report as a human-readable HTML page."""
    key = _output(services, tenant, job_id, "report_html")
    return Response(services.store.get_bytes(key), media_type="text/html; charset=utf-8",
                    headers=REPORT_PAGE_HEADERS)


@router.get("/{job_id}/weights", response_class=StreamingResponse,
            responses={**_OUTPUT_ERRORS, 200: {"content": {"application/vnd.apache.parquet": {}},
                                               "description": "Per training row: row, epsilon, weight."}})
def get_job_weights(job_id: str, services: ServicesDep, tenant: TenantDep) -> StreamingResponse:
    """The per-sample weights (Parquet): training ``row`` index, ``epsilon``, effective ``weight`` = 1 + ε."""
    key = _output(services, tenant, job_id, "weights")
    headers = {"Content-Disposition": f'attachment; filename="weights-{job_id}.parquet"',
               "Content-Length": str(services.store.size(key)), **OUTPUT_HEADERS}
    return StreamingResponse(services.store.open_chunks(key), media_type="application/vnd.apache.parquet",
                             headers=headers)


@router.get("/{job_id}/model", response_class=StreamingResponse,
            responses={**_OUTPUT_ERRORS, 200: {"content": {"application/octet-stream": {}},
                                               "description": "The corrected safetensors checkpoint."}})
def get_job_model(job_id: str, services: ServicesDep, tenant: TenantDep) -> StreamingResponse:
    """The corrected checkpoint (safetensors; same keys, shapes and dtypes as the input)."""
    key = _output(services, tenant, job_id, "model")
    headers = {"Content-Disposition": f'attachment; filename="corrected-{job_id}.safetensors"',
               "Content-Length": str(services.store.size(key))}
    return StreamingResponse(services.store.open_chunks(key), media_type="application/octet-stream",
                             headers=headers)
