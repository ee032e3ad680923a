"""Per-tenant quotas and rate limits, answered 429 + Retry-After.

Rates are fixed-window counters in Redis (``INCR`` + ``EXPIRE`` in one transaction), so every API
process of a deployment shares them. A rate limiter that cannot reach Redis lets the request
through: rate limiting protects the service, and a Redis outage already answers 503 wherever a
request needs Redis. Quotas on what a tenant holds (jobs in flight, stored bytes) are read from
the store's records, the record of truth.
"""

from __future__ import annotations

import logging
import math
import time

from redis import Redis
from redis.exceptions import RedisError

from app.errors import ApiError
from models_store import Records
from workers.settings import ServiceSettings

__all__ = ["RateLimiter", "check_job_quota", "check_storage_quota", "too_many"]

log = logging.getLogger(__name__)


def too_many(code: str, detail: str, retry_after_s: float) -> ApiError:
    """A 429 problem with ``Retry-After`` (whole seconds, at least 1)."""
    return ApiError(429, code, detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class RateLimiter:
    """Fixed-window event counters in Redis, one per (limit name, subject, window)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix

    def _key(self, name: str, subject: str, window_s: int, now: float) -> tuple[str, float]:
        window = int(now // window_s)
        return f"{self.prefix}:rate:{name}:{subject}:{window}", (window + 1) * window_s - now

    def hit(self, name: str, subject: str, limit: int, window_s: int) -> float | None:
        """Count one event; the seconds to wait when that makes more than ``limit`` in the window,
        else None (also when ``limit`` is 0, i.e. off, or Redis is unreachable)."""
        if limit <= 0:
            return None
        key, left = self._key(name, subject, window_s, time.time())
        try:
            pipe = self.redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, window_s + 1)
            count = int(pipe.execute()[0])
        except RedisError as exc:
            log.warning("rate limit %s not applied: Redis unavailable (%s)", name, type(exc).__name__)
            return None
        return left if count > limit else None

    def over(self, name: str, subject: str, limit: int, window_s: int) -> float | None:
        """Like :meth:`hit` without counting: the wait if ``limit`` events already happened."""
        if limit <= 0:
            return None
        key, left = self._key(name, subject, window_s, time.time())
        try:
            raw = self.redis.get(key)
        except RedisError:
            return None
        count = int(raw) if isinstance(raw, bytes | str | int) else 0
        return left if count >= limit else None


def check_job_quota(records: Records, settings: ServiceSettings, tenant: str) -> None:
    """429 when ``tenant`` already has its quota of queued plus running jobs."""
    limit = settings.quota_jobs_in_flight
    if limit > 0 and records.tenant_usage(tenant).jobs_in_flight >= limit:
        raise too_many("job_quota_exceeded", f"you have {limit} jobs queued or running, the most this "
                       "service allows; wait for one to finish or cancel one", 30)


def check_storage_quota(records: Records, settings: ServiceSettings, tenant: str, incoming: int) -> None:
    """429 when storing ``incoming`` more bytes would take ``tenant`` past its stored-bytes quota."""
    limit = settings.quota_stored_bytes
    if limit <= 0:
        return
    used = records.tenant_usage(tenant).stored_bytes
    if used + incoming > limit:
        raise too_many("storage_quota_exceeded", f"you store {used} bytes; {incoming} more would pass "
                       f"your quota of {limit} bytes. Delete models, datasets or finished jobs you no "
                       "longer need (DELETE /v1/models/{id}, /v1/datasets/{id}, /v1/jobs/{id})", 60)
