"""A small typed Python client of the v1 API (httpx); the demo uses it.

    client = SoftUnlearnClient("http://127.0.0.1:8000", api_key)
    model = client.upload_model("model.safetensors", {"type": "mlp", "in_features": 103, ...})
    job = client.create_job({"model_id": model["id"], ..., "objective": {...}})
    job = client.wait(job["id"], on_update=print)
    client.download_model(job["id"], "corrected.safetensors")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["ApiProblem", "SoftUnlearnClient"]

TERMINAL = ("succeeded", "failed", "canceled")


class ApiProblem(Exception):
    """A non-2xx answer, carrying the problem document's ``status``, ``code`` and ``detail``."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.body = status, code, detail, body


class SoftUnlearnClient:
    """Synchronous client; every method raises :class:`ApiProblem` on an error answer."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def __enter__(self) -> SoftUnlearnClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {}
        raise ApiProblem(response.status_code, str(body.get("code", "http_error")),
                         str(body.get("detail", response.text[:200])), body)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        data: dict[str, Any] = self._check(response).json()
        return data

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
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

    def _upload(self, path: str | Path, route: str, field: str, value: dict[str, Any]) -> dict[str, Any]:
        path = Path(path)
        with open(path, "rb") as handle:
            files = {"file": (path.name, handle, "application/octet-stream")}
            return self._json(self._http.post(route, files=files, data={field: json.dumps(value)}))

    def upload_model(self, path: str | Path, architecture: dict[str, Any]) -> dict[str, Any]:
        """Upload a safetensors checkpoint; returns the model record (``id``, ``sha256``, ...)."""
        return self._upload(path, "/v1/models", "architecture", architecture)

    def upload_dataset(self, path: str | Path, schema: dict[str, Any]) -> dict[str, Any]:
        """Upload a Parquet/CSV dataset; returns the dataset record."""
        return self._upload(path, "/v1/datasets", "schema", schema)

    def delete_model(self, model_id: str) -> None:
        """Delete an uploaded model (409 ``artifact_in_use`` while a queued or running job needs it)."""
        self._check(self._http.delete(f"/v1/models/{model_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (409 ``artifact_in_use`` while a queued or running job needs it)."""
        self._check(self._http.delete(f"/v1/datasets/{dataset_id}"))

    def create_job(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a correction job; returns the job (status ``queued``)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self._http.post("/v1/jobs", json=spec, headers=headers))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job's status, stage and progress."""
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def list_jobs(self, limit: int = 50, offset: int = 0, status: str | None = None) -> dict[str, Any]:
        """One page of jobs, newest first (only those with ``status`` when given)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return self._json(self._http.get("/v1/jobs", params=params))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return self._json(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job and its outputs (409 ``job_not_finished`` while queued or running)."""
        self._check(self._http.delete(f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float = 3600.0, interval: float = 0.5,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job ends; ``on_update`` sees every status read.

        Raises:
            TimeoutError: the job did not end within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            time.sleep(interval)

    def get_report(self, job_id: str) -> dict[str, Any]:
        """The report JSON of a succeeded job."""
        return self._json(self._http.get(f"/v1/jobs/{job_id}/report"))

    def get_report_html(self, job_id: str) -> str:
        """The report page of a succeeded job."""
        return self._check(self._http.get(f"/v1/jobs/{job_id}/report.html")).text

    def get_frontier(self, job_id: str) -> dict[str, Any]:
        """The trade-off frontier of a succeeded job (``frontier``, ``frontier_info``)."""
        return self._json(self._http.get(f"/v1/jobs/{job_id}/frontier"))

    def download_model(self, job_id: str, destination: str | Path) -> Path:
        """Stream the corrected checkpoint to ``destination`` (written atomically)."""
        return self._download(f"/v1/jobs/{job_id}/model", Path(destination))

    def download_weights(self, job_id: str, destination: str | Path) -> Path:
        """Stream the per-sample weights (Parquet: row, epsilon, weight) to ``destination``."""
        return self._download(f"/v1/jobs/{job_id}/weights", Path(destination))

    def _download(self, route: str, destination: Path) -> Path:
        partial = destination.with_name(destination.name + ".partial")
        with self._http.stream("GET", route) as response:
            if not response.is_success:
                response.read()
                self._check(response)
            with open(partial, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        partial.replace(destination)
        return destination
