"""Each test session holds its own Redis database: two sessions on one Redis (CI jobs side by side,
a run during another) must not flush each other's queues and jobs mid-test."""

from __future__ import annotations

import subprocess
import sys

import redis

from tests.app import support


def test_the_session_database_is_held_and_a_flush_keeps_the_hold() -> None:
    url = support.session_redis_url()
    connection = redis.Redis.from_url(url)
    assert connection.connection_pool.connection_kwargs.get("db") in support.TEST_REDIS_DBS
    support.flush_test_db()
    assert connection.get(support.SESSION_KEY) == support._SESSION_TOKEN.encode()
    assert 0 < connection.ttl(support.SESSION_KEY) <= support.SESSION_TTL_S


def test_a_concurrent_session_gets_another_database() -> None:
    ours = support.session_redis_url()
    code = "from tests.app.support import session_redis_url; print(session_redis_url())"
    other = subprocess.run([sys.executable, "-c", code], cwd=support.ROOT, capture_output=True, text=True,
                           check=True, timeout=60).stdout.strip()
    assert other.rsplit("/", 1)[0] == ours.rsplit("/", 1)[0] and other != ours, (ours, other)
    # the other session released its database when it exited
    assert redis.Redis.from_url(other).get(support.SESSION_KEY) is None
