"""The log formatters: one JSON object a line with the common fields, tracebacks inside it,
secrets masked, RQ's misleading "Job OK" dropped; the text format for people."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from workers import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger writing through the service's handler into a buffer."""
    stream = io.StringIO()
    handler = logs.configure("json")
    handler.setStream(stream)  # type: ignore[attr-defined]
    logger = logging.getLogger("tests.logs")
    try:
        yield logger, stream, handler
    finally:
        logging.getLogger().removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_the_common_fields_and_its_context(
        captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _handler = captured
    with logs.bind(request_id="r-1", tenant="acme"):
        logs.note(job_id="j-1")
        logs.event(logger, logging.INFO, "job_started", "job %s started", "j-1", attempt=2,
                   duration_s=0.1234567)
    logger.info("outside")
    inside, outside = _lines(stream)
    assert inside["event"] == "job_started" and inside["message"] == "job j-1 started"
    assert (inside["request_id"], inside["tenant"], inside["job_id"]) == ("r-1", "acme", "j-1")
    assert inside["attempt"] == 2 and inside["duration_s"] == 0.123457 and inside["level"] == "INFO"
    assert str(inside["ts"]).endswith("Z") and inside["logger"] == "tests.logs"
    assert outside["event"] == "log" and "request_id" not in outside


def test_a_traceback_stays_on_its_line_and_secrets_are_masked(
        captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, stream, _handler = captured
    try:
        raise RuntimeError("cannot reach redis://:hunter2@db:6379/0 with Bearer abc.def")
    except RuntimeError:
        logger.exception("failed with api_key=sk-123")
    [line] = _lines(stream)
    assert "Traceback" in str(line["exc"]) and "RuntimeError" in str(line["exc"])
    text = stream.getvalue()
    assert "hunter2" not in text and "abc.def" not in text and "sk-123" not in text
    assert "redis://:***@db" in str(line["exc"])


def test_rq_lines_get_events_and_the_job_ok_line_is_dropped(
        captured: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    _logger, stream, _handler = captured
    rq = logging.getLogger("rq.worker")
    rq.info("Worker %s: %s: %s (%s)", "w1", "p:cpu", "correction j-9 of tenant acme", "j-9")
    rq.info("Worker %s: %s: %s (%s)", "w1", "p:cpu", "\x1b[34mJob OK\x1b[39;49;00m", "j-9")
    rq.info("Successfully completed %s job in %ss on worker %s", "x", 1, "w1")
    rq.info("*** Listening on %s...", "\x1b[32mp:cpu\x1b[39;49;00m")
    dequeued, listening = _lines(stream)
    assert (dequeued["event"], dequeued["job_id"], dequeued["queue"]) == ("job_dequeued", "j-9", "p:cpu")
    assert listening["event"] == "worker_listening" and "\x1b" not in str(listening["message"])


def test_the_text_format_is_one_human_line() -> None:
    record = logging.LogRecord("app.access", logging.INFO, __file__, 1, "GET %s", ("/healthz",), None)
    record.event, record.status = "request", 200
    line = logs.TextFormatter().format(record)
    assert line.endswith("INFO    app.access request: GET /healthz status=200"), line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.parametrize(("value", "accepted"), [
    ("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("", False), ("a b", False),
    ("naïve", False), ("line\nbreak", False)])
def test_request_ids_from_clients_are_checked(value: str, accepted: bool) -> None:
    assert (logs.accepted_request_id(value) == value) is accepted
    assert logs.accepted_request_id(None) is None
