"""The client's retries: which answers are retried, how long it waits, when it gives up.

The server side here is httpx's MockTransport: the behaviour under test is the client's own
(what it does with a 429, a 503 with Retry-After, a dropped connection); end-to-end use against
a real service is in tests/cli/test_submit.py.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.client import ApiProblem, RetryPolicy, SoftUnlearnClient
from app.client.retry import retry_after_seconds

Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests from a list of (status, headers) or exceptions, counting calls."""

    def __init__(self, *steps: tuple[int, dict[str, str]] | Exception) -> None:
        self.steps, self.calls = list(steps), 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        if isinstance(step, Exception):
            raise step
        status, headers = step
        body = {"id": "j1", "status": "queued"} if status < 400 else {"code": f"e{status}", "detail": "no"}
        return httpx.Response(status, json=body, headers=headers)


def new_waits() -> list[float]:
    return []


def client_for(script: Script, waits: list[float], attempts: int = 5) -> SoftUnlearnClient:
    policy = RetryPolicy(attempts=attempts, deadline_s=60, initial_s=0.25, max_wait_s=20, sleep=waits.append)
    return SoftUnlearnClient("http://svc", "key", transport=httpx.MockTransport(script), retry=policy)


def test_a_503_with_retry_after_waits_as_asked_then_succeeds() -> None:
    script, waits = Script((503, {"Retry-After": "3"}), (200, {})), new_waits()
    assert client_for(script, waits).get_job("j1")["status"] == "queued"
    assert script.calls == 2 and waits == [3.0]


def test_429_is_retried_and_a_huge_retry_after_is_capped() -> None:
    script, waits = Script((429, {"Retry-After": "7200"}), (429, {}), (200, {})), new_waits()
    client_for(script, waits).get_job("j1")
    assert script.calls == 3 and waits[0] == 20.0 and 0 < waits[1] <= 20.0


def test_connection_errors_are_retried_with_growing_backoff() -> None:
    refused = httpx.ConnectError("refused")
    script, waits = Script(refused, refused, refused, (200, {})), new_waits()
    client_for(script, waits).get_job("j1")
    assert script.calls == 4 and len(waits) == 3
    assert waits[0] < 2.0 and waits[2] >= 0.9 * 0.25 * 4, waits  # 0.25 * 2**n plus jitter < 1 s


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 422, 500])
def test_other_error_answers_are_never_retried(status: int) -> None:
    script, waits = Script((status, {})), new_waits()
    with pytest.raises(ApiProblem) as raised:
        client_for(script, waits).get_job("j1")
    assert script.calls == 1 and waits == [] and raised.value.status == status
    assert raised.value.code == f"e{status}"


def test_giving_up_returns_the_last_answer_as_an_error() -> None:
    script, waits = Script((503, {"Retry-After": "1"})), new_waits()
    with pytest.raises(ApiProblem) as raised:
        client_for(script, waits, attempts=3).get_job("j1")
    assert script.calls == 3 and waits == [1.0, 1.0] and raised.value.status == 503


def test_giving_up_on_connection_errors_raises_the_last_one() -> None:
    script, waits = Script(httpx.ConnectError("refused")), new_waits()
    with pytest.raises(httpx.ConnectError):
        client_for(script, waits, attempts=2).get_job("j1")
    assert script.calls == 2


def test_a_job_is_resubmitted_only_with_an_idempotency_key() -> None:
    script, waits = Script((503, {}), (202, {})), new_waits()
    with pytest.raises(ApiProblem):
        client_for(script, waits).create_job({"objective": {}})
    assert script.calls == 1
    script = Script((503, {}), (202, {}))
    assert client_for(script, waits).create_job({"objective": {}}, idempotency_key="k")["id"] == "j1"
    assert script.calls == 2


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    def answer(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_seconds(answer("12")) == 12.0
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert retry_after_seconds(answer("Tue, 14 Nov 2023 22:13:50 GMT"), now=now) == pytest.approx(30.0)
    assert retry_after_seconds(answer("Tue, 14 Nov 2023 22:00:00 GMT"), now=now) == 0.0
    assert retry_after_seconds(answer("soon")) is None
    assert retry_after_seconds(httpx.Response(503)) is None
