"""When and how long the client retries: connection errors, 429 and 502/503/504, honouring
``Retry-After``; never another 4xx (a bad request stays bad).

Built on tenacity (a maintained retry library) rather than a hand-written loop: its stop and
wait strategies compose, and a custom wait reads ``Retry-After`` from the last answer.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "retry_after_seconds"]

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
"""Answers that mean "not now" rather than "not this": rate limited, busy, a gateway in trouble."""


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (delta seconds or an HTTP date), or None."""
    raw = response.headers.get("retry-after", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return float(raw)
    try:
        moment = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return max(0.0, (moment - current).total_seconds())


def _retryable(response: httpx.Response) -> bool:
    return response.status_code in RETRYABLE_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: at most ``attempts`` tries within ``deadline_s``, exponential backoff
    with jitter from ``initial_s`` up to ``max_wait_s`` between tries, or the server's
    ``Retry-After`` when it gives one (capped at ``max_wait_s``)."""

    attempts: int = 8
    deadline_s: float = 300.0
    initial_s: float = 0.5
    max_wait_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def _wait(self) -> Callable[[RetryCallState], float]:
        # tenacity's wait_exponential_jitter renamed its arguments across versions; this sum is stable.
        backoff = (wait_exponential(multiplier=self.initial_s, max=self.max_wait_s)
                   + wait_random(0, self.initial_s))

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            if outcome is not None and not outcome.failed:
                asked = retry_after_seconds(outcome.result())
                if asked is not None and math.isfinite(asked):
                    return min(asked, self.max_wait_s)
            return float(backoff(state))

        return wait

    def call(self, send: Callable[[], httpx.Response],
             on_retry: Callable[[str, float], None] | None = None) -> httpx.Response:
        """``send()`` until it gives an answer that is not retryable, or the policy gives up;
        then the last answer is returned (a 503 stays a 503) or the last transport error raised.
        ``on_retry(why, wait_s)`` hears of each retry."""

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is None or state.next_action is None:
                return
            outcome = state.outcome
            why = (f"{type(outcome.exception()).__name__}" if outcome is not None and outcome.failed
                   else f"HTTP {outcome.result().status_code}" if outcome is not None else "retry")
            on_retry(why, state.next_action.sleep)

        retrying = Retrying(
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(_retryable),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline_s),
            wait=self._wait(), sleep=self.sleep, before_sleep=before_sleep,
            retry_error_callback=_last_outcome, reraise=True,
        )
        response: httpx.Response = retrying(send)
        return response


def _last_outcome(state: RetryCallState) -> httpx.Response:
    """When tries run out: the last answer as it was, or the last error raised."""
    assert state.outcome is not None
    result: httpx.Response = state.outcome.result()  # re-raises a transport error
    return result
