"""Structured logs of ``softunlearn serve`` and ``softunlearn worker`` (torch-free).

Every line is one JSON object (``json``, the default) or one human line (``text``) with ``ts``
(UTC, ISO 8601, milliseconds, ``Z``), ``level``, ``logger``, ``event`` (a short stable snake_case
name), ``message``, the context of the line (``request_id``, ``tenant``, ``job_id``, ``stage``)
and the fields its caller gave (``duration_s``, ``status``, ``code``, ...). A traceback goes into
``exc`` of its line, never onto lines of its own. Everything that logs through the stdlib goes
through the one handler :func:`configure` installs: our modules, uvicorn (``uvicorn.error``; its
access log is replaced by ours, app/access_log.py) and RQ (``rq.worker``, whose misleading
"Job OK" is dropped: the job function's own ``job_finished``/``job_failed`` lines say how the job
really ended).

Why a stdlib :class:`logging.Formatter` subclass rather than python-json-logger or structlog: the
lines must carry a fixed field set, events for RQ's and uvicorn's own records and masking of
secrets, from loggers we do not own (RQ, uvicorn) that log through the stdlib; a formatter and a
filter on one handler do all of it in a few dozen lines, without a dependency, and structlog
would still need this stdlib bridge for those loggers.

Context is kept in a :class:`contextvars.ContextVar`: :func:`bind` for a block (a request, a
job), :func:`note` to add to the context in force (the tenant, known once the API key is checked,
in a dependency that runs in a worker thread with a copy of the context).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "LogFormat",
    "RqLines",
    "TextFormatter",
    "accepted_request_id",
    "bind",
    "configure",
    "context",
    "event",
    "new_request_id",
    "note",
]

LogFormat = Literal["json", "text"]
FORMATS: tuple[LogFormat, ...] = ("json", "text")
CONTEXT_FIELDS = ("request_id", "tenant", "job_id", "stage")
"""Fields taken from the context of the line."""
EXTRA_FIELDS = ("duration_s", "status", "code", "method", "route", "queue", "attempt", "device",
                "threads", "worker", "client_disconnected")
"""Fields a caller may pass in ``extra`` (anything else passed is ignored by the formatters)."""
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
_fields: ContextVar[dict[str, Any] | None] = ContextVar("softunlearn_log_fields", default=None)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SECRETS = (
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\1***"),
    (re.compile(r"(://[^:/@\s]*:)[^@\s/]+@"), r"\1***@"),  # a password in a URL
    (re.compile(r"(?i)((?:api[_-]?key|password|secret)[\"']?\s*[=:]\s*[\"']?)[^\s\"',&]+"), r"\1***"),
)
_HANDLER_NAME = "softunlearn"


# --- context ------------------------------------------------------------------------------------
@contextmanager
def bind(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add ``fields`` (None values skipped) to the context of every line logged in the block."""
    merged = {**(_fields.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _fields.set(merged)
    try:
        yield merged
    finally:
        _fields.reset(token)


def note(**fields: Any) -> None:
    """Add ``fields`` to the context in force (the dict :func:`bind` made, so a copy of the
    context, in a worker thread, changes what the block's later lines carry); no-op outside one."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def context() -> dict[str, Any]:
    """A copy of the context in force."""
    return dict(_fields.get() or {})


def new_request_id() -> str:
    """A fresh request id (uuid4, hex)."""
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str | None:
    """``value`` when it is a usable request id (1 to 128 printable ASCII characters, no spaces),
    else None."""
    if value is None or not _REQUEST_ID.fullmatch(value):
        return None
    return value


def event(logger: logging.Logger, level: int, name: str, message: str, *args: Any, **fields: Any) -> None:
    """Log ``message % args`` as event ``name`` with ``fields`` (see :data:`EXTRA_FIELDS`)."""
    logger.log(level, message, *args, extra={"event": name, **fields})


# --- formatting ---------------------------------------------------------------------------------
def mask_secrets(text: str) -> str:
    """``text`` with bearer tokens, URL passwords and ``key=value`` secrets replaced by ``***``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _default_event(name: str) -> str:
    """The event of a line whose caller named none: from its logger (``uvicorn.error`` → ``uvicorn``)."""
    if name.startswith("uvicorn"):
        return "uvicorn"
    if name.startswith("rq."):
        return "rq"
    return "log"


def line_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """The fields of ``record``'s line, in order (secrets masked, colour codes removed)."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created), "level": record.levelname, "logger": record.name,
        "event": getattr(record, "event", None) or _default_event(record.name),
        "message": mask_secrets(_ANSI.sub("", record.getMessage())),
    }
    recorded: Mapping[str, Any] = getattr(record, "softunlearn_context", None) or context()
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None) or recorded.get(name)
        if value is not None:
            fields[name] = value
    for name in EXTRA_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = round(value, 6) if isinstance(value, float) else value
    if record.exc_info:
        fields["exc"] = mask_secrets(formatter.formatException(record.exc_info))
    elif record.exc_text:
        fields["exc"] = mask_secrets(record.exc_text)
    if record.stack_info:
        fields["stack"] = record.stack_info
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record (a traceback in its ``exc`` field)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        return json.dumps(line_fields(record, self), ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger event: message key=value ...`` with a traceback on the lines after."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a human line."""
        fields = line_fields(record, self)
        head = f"{fields.pop('ts')} {fields.pop('level'):<7} {fields.pop('logger')} {fields.pop('event')}: " \
               f"{fields.pop('message')}"
        exc = fields.pop("exc", None)
        stack = fields.pop("stack", None)
        tail = "".join(f" {key}={value}" for key, value in fields.items())
        return head + tail + "".join(f"\n{text}" for text in (exc, stack) if text)


class RqLines(logging.Filter):
    """RQ's worker lines: drops the ones that misstate a job's outcome ("Job OK", "Successfully
    completed", result TTLs: RQ calls a job that returned a failed status OK) and names the
    dequeue line ``job_dequeued`` with its ``job_id``. Other records pass unchanged."""

    _DEQUEUE = "Worker %s: %s: %s (%s)"
    _DROPPED = ("Successfully completed", "result is kept for", "result discarded immediately")
    _EVENTS = (("Listening on", "worker_listening"), ("started with PID", "rq_worker_started"),
               ("warm shut down", "worker_stopping"), ("cold shut down", "worker_stopping"),
               ("quitting", "worker_stopped"), ("cleaning", "rq_maintenance"))

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to keep ``record`` (it may be given an event and a job id)."""
        if not record.name.startswith("rq."):
            return True
        template = str(record.msg)
        if template == self._DEQUEUE and isinstance(record.args, tuple) and len(record.args) == 4:
            if "Job OK" in str(record.args[2]):
                return False
            record.event, record.job_id = "job_dequeued", str(record.args[3])
            record.queue = _ANSI.sub("", str(record.args[1]))
            return True
        if any(part in template for part in self._DROPPED):
            return False
        if getattr(record, "event", None) is None:
            record.event = next((name for part, name in self._EVENTS if part in template), "rq")
        return True


class _Context(logging.Filter):
    """Captures the context when a record is made (a handler may format it later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "softunlearn_context"):
            record.softunlearn_context = context()
        return True


def configure(log_format: LogFormat = "json", level: int | str = logging.INFO) -> logging.Handler:
    """Send every log record of this process to stderr in ``log_format`` (replacing an earlier
    call's handler); returns the handler.

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}; got {log_format!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Context())
    handler.addFilter(RqLines())
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    logging.captureWarnings(True)
    return handler
