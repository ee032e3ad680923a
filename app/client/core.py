"""The synchronous client of the v1 API: every call retries what is worth retrying
(:mod:`app.client.retry`) and raises :class:`~app.client.errors.ApiProblem` on an error answer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from app.client.errors import ApiProblem, JobCanceled, JobFailed
from app.client.files import file_sha256
from app.client.retry import RetryPolicy

__all__ = ["TERMINAL", "SoftUnlearnClient"]

TERMINAL = ("succeeded", "failed", "canceled")
RetryHook = Callable[[str, float], None]


class SoftUnlearnClient:
    """Talks to one SoftUnlearn service as one tenant (its API key).

    ``retry`` says how hard to try on connection errors, 429 and 502/503/504 (honouring
    ``Retry-After``); ``on_retry(why, wait_s)`` hears of each retry (e.g. to log it).
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, retry: RetryPolicy | None = None,
                 on_retry: RetryHook | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})
        self._retry = retry or RetryPolicy()
        self._on_retry = on_retry

    def __enter__(self) -> SoftUnlearnClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, method: str, route: str, **kwargs: Any) -> httpx.Response:
        return self._retry.call(lambda: self._http.request(method, route, **kwargs), self._on_retry)

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        raise ApiProblem(response.status_code, str(body.get("code", "http_error")),
                         str(body.get("detail", response.text[:200])), body)

    def _json(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self._check(self._send(method, route, **kwargs)).json()
        return data

    # -- service -------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (one try, no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the service is ready.

        Raises:
            TimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API was not ready within {timeout:.0f} s")
            time.sleep(0.2)

    def version(self) -> dict[str, Any]:
        """``GET /v1/version``: the service's package and API versions."""
        return self._json("GET", "/v1/version")

    # -- uploads -------------------------------------------------------------------------------

    def _upload(self, path: Path, route: str, field: str, value: dict[str, Any]) -> dict[str, Any]:
        def send() -> httpx.Response:  # the file is reopened for every try
            with open(path, "rb") as handle:
                files = {"file": (path.name, handle, "application/octet-stream")}
                return self._http.post(route, files=files, data={field: json.dumps(value)})

        return self._check(self._retry.call(send, self._on_retry)).json()  # type: ignore[no-any-return]

    def _find(self, route: str, sha256: str) -> list[dict[str, Any]]:
        return list(self._json("GET", route, params={"sha256": sha256, "limit": 200})["items"])

    def find_models(self, sha256: str) -> list[dict[str, Any]]:
        """The tenant's models whose uploaded bytes have digest ``sha256``."""
        return self._find("/v1/models", sha256)

    def find_datasets(self, sha256: str) -> list[dict[str, Any]]:
        """The tenant's datasets whose uploaded bytes have digest ``sha256``."""
        return self._find("/v1/datasets", sha256)

    def upload_model(self, path: str | Path, architecture: dict[str, Any],
                     reuse: bool = False) -> dict[str, Any]:
        """Upload a safetensors checkpoint; returns the model record (``id``, ``sha256``, ...).

        With ``reuse``, an earlier upload of the same bytes and architecture is returned instead
        (the record gets ``"reused": true``): an interrupted submission resumes where it stopped.
        """
        path = Path(path)
        if reuse:
            for found in self.find_models(file_sha256(path)):
                if found.get("architecture") == architecture:
                    return {**found, "reused": True}
        return self._upload(path, "/v1/models", "architecture", architecture)

    def upload_dataset(self, path: str | Path, schema: dict[str, Any], reuse: bool = False) -> dict[str, Any]:
        """Upload a Parquet/CSV/safetensors dataset; returns the dataset record.

        With ``reuse``, an earlier upload of the same bytes with the same schema is returned
        instead (``"reused": true``).
        """
        path = Path(path)
        if reuse:
            for found in self.find_datasets(file_sha256(path)):
                if found.get("schema") == schema:
                    return {**found, "reused": True}
        return self._upload(path, "/v1/datasets", "schema", schema)

    def delete_model(self, model_id: str) -> None:
        """Delete an uploaded model (409 ``artifact_in_use`` while a queued or running job needs it)."""
        self._check(self._send("DELETE", f"/v1/models/{model_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (409 ``artifact_in_use`` while a queued or running job needs it)."""
        self._check(self._send("DELETE", f"/v1/datasets/{dataset_id}"))

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a correction job; returns the job (status ``queued``, or the job this key made
        before). Retried only with an ``idempotency_key``: without one a retry could make a
        second job."""
        if idempotency_key is None:
            return self._json_once("POST", "/v1/jobs", json=spec)
        return self._json("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": idempotency_key})

    def _json_once(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self._check(self._http.request(method, route, **kwargs)).json()
        return data

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job's status, stage and progress."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, limit: int = 50, offset: int = 0, status: str | None = None) -> dict[str, Any]:
        """One page of jobs, newest first (only those with ``status`` when given)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (cancelling twice is harmless)."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job and its outputs (409 ``job_not_finished`` while queued or running)."""
        self._check(self._send("DELETE", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float = 3600.0, interval: float = 0.5,
             on_update: Callable[[dict[str, Any]], None] | None = None,
             raise_on_failure: bool = True) -> dict[str, Any]:
        """Poll until the job ends and return it; ``on_update`` sees every status read.

        Raises:
            JobFailed: the job failed (``code``, ``message``), unless not ``raise_on_failure``.
            JobCanceled: the job was canceled, unless not ``raise_on_failure``.
            TimeoutError: the job did not end within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            time.sleep(interval)
        if raise_on_failure and job["status"] == "failed":
            raise JobFailed(job)
        if raise_on_failure and job["status"] == "canceled":
            raise JobCanceled(job)
        return job

    # -- outputs -------------------------------------------------------------------------------

    def get_report(self, job_id: str) -> dict[str, Any]:
        """The report JSON of a succeeded job."""
        return self._json("GET", f"/v1/jobs/{job_id}/report")

    def get_report_html(self, job_id: str) -> str:
        """The report page of a succeeded job."""
        return self._check(self._send("GET", f"/v1/jobs/{job_id}/report.html")).text

    def get_frontier(self, job_id: str) -> dict[str, Any]:
        """The trade-off frontier of a succeeded job (``frontier``, ``frontier_info``)."""
        return self._json("GET", f"/v1/jobs/{job_id}/frontier")

    def download_model(self, job_id: str, destination: str | Path) -> Path:
        """Stream the corrected checkpoint to ``destination`` (written atomically)."""
        return self.download(job_id, "model", Path(destination))

    def download_weights(self, job_id: str, destination: str | Path) -> Path:
        """Stream the per-sample weights (Parquet: row, epsilon, weight) to ``destination``."""
        return self.download(job_id, "weights", Path(destination))

    def download(self, job_id: str, output: str, destination: Path) -> Path:
        """Stream output ``output`` (``model``, ``report``, ``report.html``, ``weights``,
        ``frontier``) of a succeeded job to ``destination``, byte for byte as served, written
        atomically; an interrupted transfer is started again."""
        partial = destination.with_name(destination.name + ".partial")

        def send() -> httpx.Response:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/{output}") as response:
                if response.is_success:
                    with open(partial, "wb") as out:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                else:
                    response.read()
                return response

        try:
            self._check(self._retry.call(send, self._on_retry))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(destination)
        return destination
