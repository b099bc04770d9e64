"""Databases for the SQL sink tests: a SQLite file per test, a fresh PostgreSQL database per run.

PostgreSQL is the real server on 127.0.0.1:5432 (trust auth), which `.ci/run` starts.
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_HOST = os.environ.get("RELAYRL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def pg_url():
    psycopg = pytest.importorskip("psycopg")
    name = f"relayrl_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(f"{PG_HOST}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL is not running at {PG_HOST} ({err}); start it with "
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_HOST}/{name}"
    # A new connection: a test may have restarted the server in between.
    with psycopg.connect(f"{PG_HOST}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return request.getfixturevalue("pg_url")
