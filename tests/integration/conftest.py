"""Fixtures of the integration tests that build stores from nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL, postgres_param


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A new, empty Postgres database of its own (dropped afterwards)."""
    if not POSTGRES_URL:
        pytest.skip("BATCHOR_TEST_POSTGRES_URL not set")
    name = f"batchor_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", postgres_param()])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a store that does not exist yet: a new SQLite file or Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    else:
        yield request.getfixturevalue("fresh_postgres")
