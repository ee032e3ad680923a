"""What the client raises: an error answer, or a job that ended without succeeding."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiProblem", "JobCanceled", "JobEnded", "JobFailed"]


class ApiProblem(Exception):
    """A non-2xx answer, carrying the problem document's ``status``, ``code`` and ``detail``."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.body = status, code, detail, body


class JobEnded(Exception):
    """A job ended without succeeding; ``job`` is its last status document."""

    def __init__(self, job: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobEnded):
    """The job failed: ``code`` and ``message`` say why (the service's ``error``)."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        self.code = str(error.get("code", "unknown"))
        self.message = str(error.get("message", "no reason recorded"))
        super().__init__(job, f"job {job.get('id')} failed: {self.code}: {self.message}")


class JobCanceled(JobEnded):
    """The job was canceled before it finished."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job, f"job {job.get('id')} was canceled")
