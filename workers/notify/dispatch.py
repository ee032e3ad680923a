"""The webhook outbox in Redis and the delivery attempts.

A job that names ``notify.url`` gets one event when it reaches a terminal state. Whoever makes
that transition (the worker, the API's cancel, the reconciler) puts the job into the outbox, a
Redis sorted set ``PREFIX:webhooks:due`` of ``tenant/job_id`` members scored by the time their
next attempt is due (``ZADD NX``, so doing it twice is harmless). The worker makes the first
attempt at once (bounded by ``SOFTUNLEARN_WEBHOOK_TIMEOUT_S``); the reconciler's periodic pass in
the API delivers whatever is due: retries, and events of transitions made elsewhere.

An attempt is claimed atomically (a Lua script moves a due member's score a lease into the
future; of two processes exactly one succeeds), so one attempt is never made twice at once, and
a process that dies mid-attempt leaves the member to be retried once its lease ends. The event
body is rebuilt from the terminal manifest, so every attempt sends the same bytes under the same
``webhook-id``; each is signed afresh (new ``webhook-timestamp``) with every secret of the tenant.

Outcomes: a 2xx delivers; 410 Gone stops; any other status, a timeout or a connection error is
retried with exponential backoff and jitter until ``SOFTUNLEARN_WEBHOOK_RETRY_FOR_S`` after the
job finished. Redirects are never followed. Every attempt is recorded in the manifest
(``notifications``, the last :data:`MAX_RECORDED_ATTEMPTS`).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from redis import Redis
from redis.exceptions import RedisError

from models_store.errors import NotFound
from models_store.records import JobRecord, NotificationAttempt, Records, utcnow
from workers.job_metrics import record_webhook_delivery
from workers.notify.events import event_body, event_id, event_type, notify_url
from workers.notify.keys import tenant_secrets
from workers.notify.signing import signed_headers
from workers.notify.urls import UrlPolicy, UrlRefused, display_url, resolve_target
from workers.redact import redact_paths
from workers.settings import ServiceSettings

__all__ = ["MAX_RECORDED_ATTEMPTS", "AttemptResult", "attempt_delivery", "deliver_due", "enqueue",
           "next_delay", "notify_terminal", "outbox_key"]

log = logging.getLogger(__name__)
MAX_RECORDED_ATTEMPTS = 50
"""Attempts kept in a manifest's ``notifications`` (the oldest are dropped)."""
MAX_DELIVERIES_PER_PASS = 20
"""Due attempts one reconciler pass makes at most (the rest wait for the next pass)."""
USER_AGENT = "softunlearn-webhooks/1"
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""
def outbox_key(settings: ServiceSettings) -> str:
    """The sorted set of due deliveries of this service."""
    return f"{settings.queue_prefix}:webhooks:due"


def _member(record: JobRecord) -> str:
    return f"{record.tenant}/{record.id}"


def _finished_notifying(record: JobRecord) -> bool:
    last = record.notifications[-1] if record.notifications else None
    return last is not None and last.event_id == event_id(record) and last.next_attempt_at is None


def enqueue(redis: Redis, settings: ServiceSettings, record: JobRecord) -> bool:
    """Put a terminal job that asked for a webhook into the outbox, due now; returns whether it
    is there (False: no webhook, or its event is done). Idempotent.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    if not record.terminal or notify_url(record) is None or _finished_notifying(record):
        return False
    redis.zadd(outbox_key(settings), {_member(record): time.time()}, nx=True)
    return True


def _lease_s(settings: ServiceSettings) -> float:
    # DNS, connect, write and read, each bounded by the timeout, and some slack.
    return 4 * settings.webhook_timeout_s + 30


def _claim(redis: Redis, settings: ServiceSettings, member: str) -> bool:
    now = time.time()
    claimed = redis.eval(_CLAIM, 1, outbox_key(settings), member, repr(now), repr(now + _lease_s(settings)))
    return bool(claimed)


def next_delay(attempt: int, settings: ServiceSettings) -> float:
    """Seconds before retry number ``attempt`` (1 = the first retry): doubling from
    ``webhook_retry_min_s`` up to ``webhook_retry_max_s``, times a random factor in [0.5, 1]."""
    base = min(settings.webhook_retry_max_s, settings.webhook_retry_min_s * 2.0 ** min(attempt - 1, 40))
    return base * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class AttemptResult:
    """What one POST gave: the status (None: no answer), a short error, whether it delivered,
    and whether retrying could help."""

    status_code: int | None
    error: str | None
    delivered: bool
    retryable: bool


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return redact_paths(f"{type(exc).__name__}: {text}")[:200]


def attempt_delivery(url: str, msg_id: str, body: bytes, secrets: list[str], settings: ServiceSettings
                     ) -> AttemptResult:
    """POST ``body`` to ``url`` once, signed with ``secrets``, after checking the URL policy and
    connecting to the checked address itself (no redirects, no proxies from the environment)."""
    try:
        target = resolve_target(url, UrlPolicy.from_settings(settings))
    except UrlRefused as exc:
        unresolved = "does not resolve" in str(exc) or "has no address" in str(exc)
        return AttemptResult(None, f"refused: {exc}"[:300], False, retryable=unresolved)
    headers = {"host": target.host_header, "content-type": "application/json", "user-agent": USER_AGENT,
               **signed_headers(secrets, msg_id, body)}
    extensions = {"sni_hostname": target.server_name} if target.url.startswith("https:") else {}
    try:
        verify: ssl.SSLContext | bool = True
        if settings.webhook_ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(settings.webhook_ca_bundle))
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False,
                          verify=verify) as client:
            request = client.build_request("POST", target.url, content=body, headers=headers,
                                           extensions=extensions)
            response = client.send(request, stream=True)
            response.close()  # the receiver's body is never read: it may be anything, of any size
    except (httpx.HTTPError, OSError, ValueError) as exc:  # OSError/ValueError: sockets, header encoding
        return AttemptResult(None, _short(exc), False, retryable=True)
    code = response.status_code
    if 200 <= code < 300:
        return AttemptResult(code, None, True, retryable=False)
    if code == 410:
        return AttemptResult(code, "the receiver answered 410 Gone: no more attempts", False, retryable=False)
    reason = "a redirect (never followed)" if 300 <= code < 400 else f"HTTP {code}"
    return AttemptResult(code, f"the receiver answered {reason}", False, retryable=True)


def _outcome(result: AttemptResult, next_at: datetime | None) -> str:
    if result.delivered:
        return "delivered"
    if result.status_code == 410:
        return "gone"
    if not result.retryable:
        return "refused"
    return "retry" if next_at is not None else "gave_up"


def _deliver(records: Records, redis: Redis | None, settings: ServiceSettings, tenant: str,
             job_id: str) -> None:
    """One attempt for a claimed outbox member (or, with ``redis`` None, an attempt that cannot
    be retried); records it in the manifest and reschedules or removes the member."""
    member = f"{tenant}/{job_id}"
    record = records.get_job(tenant, job_id)
    url = notify_url(record) if record is not None else None
    if record is None or url is None or not record.terminal or _finished_notifying(record):
        if redis is not None:
            redis.zrem(outbox_key(settings), member)
        return
    msg_id, type_ = event_id(record), event_type(record)
    previous = [n for n in record.notifications if n.event_id == msg_id]
    attempt = previous[-1].attempt + 1 if previous else 1
    secrets = tenant_secrets(settings, tenant)
    if secrets:
        result = attempt_delivery(url, msg_id, event_body(records, record), secrets, settings)
    else:
        result = AttemptResult(None, "no webhook secret is configured for this tenant "
                               "(SOFTUNLEARN_WEBHOOK_SECRETS)", False, retryable=False)
    now = utcnow()
    deadline = (record.finished_at or record.updated_at) + timedelta(seconds=settings.webhook_retry_for_s)
    next_at: datetime | None = None
    if result.retryable and redis is not None:
        candidate = now + timedelta(seconds=next_delay(attempt, settings))
        next_at = candidate if candidate <= deadline else None
    entry = NotificationAttempt(event_id=msg_id, type=type_, url=display_url(url), attempt=attempt, at=now,
                                status_code=result.status_code, error=result.error,
                                delivered=result.delivered, next_attempt_at=next_at)

    def change(current: JobRecord) -> JobRecord:
        current.notifications = [*current.notifications, entry][-MAX_RECORDED_ATTEMPTS:]
        return current

    try:
        records.update_job(tenant, job_id, change)
    except NotFound:
        next_at = None  # the job was deleted meanwhile: nothing is left to notify about
    outcome = _outcome(result, next_at)
    if redis is not None:
        if next_at is not None:
            redis.zadd(outbox_key(settings), {member: next_at.timestamp()})
        else:
            redis.zrem(outbox_key(settings), member)
    level = logging.INFO if outcome == "delivered" else logging.WARNING
    log.log(level, "webhook %s of job %s to %s: attempt %d %s%s", type_, job_id, display_url(url), attempt,
            outcome, f" ({result.error})" if result.error else "")
    # Counted by outcome (delivered, retry, gave_up, gone, refused) for /metrics; never raises.
    record_webhook_delivery(redis, settings.queue_prefix, outcome)


def notify_terminal(records: Records, redis: Redis | None, settings: ServiceSettings, record: JobRecord,
                    *, deliver_now: bool = False) -> None:
    """After a terminal transition: put the job's event into the outbox and, with ``deliver_now``
    (the worker), make its first attempt here. Never raises for Redis or the receiver: without
    Redis the attempt is still made (``deliver_now``), but cannot be retried."""
    if not record.terminal or notify_url(record) is None:
        return
    try:
        if redis is None:
            raise RedisError("no connection")
        if not enqueue(redis, settings, record):
            return
        claimed = deliver_now and _claim(redis, settings, _member(record))
    except RedisError as exc:
        log.warning("webhook of job %s: Redis unavailable (%s)%s", record.id, exc,
                    "; attempting once, without retries" if deliver_now else "; it is not queued")
        if deliver_now:
            try:
                _deliver(records, None, settings, record.tenant, record.id)
            except Exception:
                log.exception("webhook of job %s: delivery failed", record.id)
        return
    if claimed:
        try:
            _deliver(records, redis, settings, record.tenant, record.id)
        except Exception:  # the member keeps its lease: the reconciler retries it when that ends
            log.exception("webhook of job %s: delivery failed; retried after its lease", record.id)


def deliver_due(records: Records, redis: Redis, settings: ServiceSettings,
                limit: int = MAX_DELIVERIES_PER_PASS) -> int:
    """Make the attempts that are due (at most ``limit``, and no new one once a reconcile interval
    or one attempt timeout, whichever is longer, has passed: slow receivers must not hold up the
    reconciler); returns how many were made.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    started, budget_s = time.monotonic(), max(settings.reconcile_interval_s, settings.webhook_timeout_s)
    due = redis.zrangebyscore(outbox_key(settings), "-inf", repr(time.time()), start=0, num=limit)
    made = 0
    for raw in due:
        if time.monotonic() - started > budget_s:
            break  # the rest stay due for the next pass
        member = raw.decode() if isinstance(raw, bytes) else str(raw)
        tenant, _, job_id = member.partition("/")
        if not _claim(redis, settings, member):
            continue  # another process claimed it first
        try:
            _deliver(records, redis, settings, tenant, job_id)
        except RedisError:
            raise
        except Exception:
            log.exception("webhook of job %s: delivery failed; retried after its lease", job_id)
        made += 1
    return made

