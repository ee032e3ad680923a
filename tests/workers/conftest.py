"""Fixtures of the worker tests: the same app fixtures as the API tests, real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import create_app
from tests.app.support import TestClient, flush_test_db, make_settings
from workers.settings import ServiceSettings


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[ServiceSettings]:
    """Settings with a private store and queue prefix; the test DB is flushed around the test."""
    flush_test_db()
    yield make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}")
    flush_test_db()


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    """A TestClient on a new app (no background reconciler: tests reconcile on read)."""
    with TestClient(create_app(settings, reconcile=False)) as test_client:
        yield test_client
