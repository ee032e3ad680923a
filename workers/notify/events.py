"""The event a job's terminal state sends: built from the manifest alone, so every retry carries
the same bytes under the same ``webhook-id``."""

from __future__ import annotations

import json
import logging
from typing import Any

from models_store.errors import NotFound
from models_store.records import JobRecord, Records
from workers.redact import redact_paths

__all__ = ["event", "event_body", "event_id", "event_type", "notify_url"]

log = logging.getLogger(__name__)


def notify_url(record: JobRecord) -> str | None:
    """The job's ``notify.url``, or None when it asked for no webhook."""
    notify = record.request.get("notify")
    url = notify.get("url") if isinstance(notify, dict) else None
    return url if isinstance(url, str) else None


def event_id(record: JobRecord) -> str:
    """The ``webhook-id`` of the job's terminal event (a job has one terminal state, so one event)."""
    return f"msg_{record.id.replace('-', '')}"


def event_type(record: JobRecord) -> str:
    """``job.succeeded``, ``job.failed`` or ``job.canceled``."""
    return f"job.{record.status}"


def _target_met(records: Records, record: JobRecord) -> bool | None:
    if record.status != "succeeded":
        return None
    try:
        key = records.output_key(record.tenant, record.id, "report.json")
        report = json.loads(records.store.get_bytes(key))
    except (NotFound, ValueError) as exc:
        log.warning("job %s: no readable report for its event (%s)", record.id, type(exc).__name__)
        return None
    met = report.get("target_met") if isinstance(report, dict) else None
    return met if isinstance(met, bool) else None


def _links(record: JobRecord) -> dict[str, str]:
    base = f"/v1/jobs/{record.id}"
    links = {"self": base}
    if record.status == "succeeded":
        links |= {"report": f"{base}/report", "report_html": f"{base}/report.html",
                  "model": f"{base}/model", "weights": f"{base}/weights"}
    return links


def event(records: Records, record: JobRecord) -> dict[str, Any]:
    """The event of a terminal manifest: ``{type, timestamp, data}`` (Standard Webhooks' shape)."""
    finished = record.finished_at or record.updated_at
    error = ({"code": record.error.code, "message": redact_paths(record.error.message)}
             if record.error is not None else None)
    return {
        "type": event_type(record),
        "timestamp": finished.isoformat().replace("+00:00", "Z"),
        "data": {
            "job_id": record.id, "status": record.status, "error": error,
            "target_met": _target_met(records, record), "attempts": record.attempts,
            "model_id": record.request.get("model_id"), "queue": record.queue,
            "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
            "finished_at": finished.isoformat().replace("+00:00", "Z"),
            "links": _links(record),
        },
    }


def event_body(records: Records, record: JobRecord) -> bytes:
    """The event as the exact bytes sent and signed (compact JSON, keys sorted)."""
    return json.dumps(event(records, record), sort_keys=True, separators=(",", ":")).encode()
