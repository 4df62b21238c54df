"""The PostgreSQL the tests share (``.ci/run`` starts it: ``.ci/start-postgres``).

``$CRMROUTE_TEST_POSTGRES_URL`` names it. Without it a test needing it is
skipped on a developer's machine, and fails under CI (``$CI`` set): there a
missing database is a broken CI script, never a quiet skip. Each test gets a
database of its own (:func:`fresh_database`), dropped afterwards.
:func:`stop_server` / :func:`start_server` stop and start the whole server,
for the outage tests.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_ENV = "CRMROUTE_TEST_POSTGRES_URL"


def base_url() -> str:
    """The server's DSN; skips (or, under CI, fails) the test when there is none or no driver."""
    url = os.environ.get(URL_ENV, "")
    missing = "" if url else f"${URL_ENV} is not set (.ci/start-postgres starts a throwaway PostgreSQL)"
    if not missing:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed: pip install -e '.[postgresql]'"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL for this test: {missing}")
        pytest.skip(missing)
    return url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test server; its DSN. Dropped at the end."""
    import psycopg

    url = base_url()
    name = "crmroute_test_" + secrets.token_hex(5)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        start_server()  # a test that stopped it and failed leaves it running for the next
        if not os.environ.get("CRMROUTE_TEST_POSTGRES_KEEP"):  # set: kept, to look at after a failure
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = os.environ.get("CRMROUTE_TEST_POSTGRES_BIN", "")
    data = os.environ.get("CRMROUTE_TEST_POSTGRES_PGDATA", "")
    if not bin_dir or not data:
        pytest.skip("the test PostgreSQL's pg_ctl is not known ($CRMROUTE_TEST_POSTGRES_BIN, _PGDATA)")
    command = [os.path.join(bin_dir, "pg_ctl"), "-D", data, *args]
    runas = os.environ.get("CRMROUTE_TEST_POSTGRES_RUNAS", "")
    if runas:
        command = ["runuser", "-u", runas, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def server_running() -> bool:
    return _pg_ctl("status").returncode == 0


def stop_server() -> None:
    """Stop the whole server now (fast: sessions are cut, as in a crash of the database)."""
    done = _pg_ctl("-m", "fast", "-w", "stop")
    assert done.returncode == 0, done.stderr


def start_server() -> None:
    if os.environ.get(URL_ENV) and os.environ.get("CRMROUTE_TEST_POSTGRES_PGDATA") and not server_running():
        data = os.environ["CRMROUTE_TEST_POSTGRES_PGDATA"]
        done = _pg_ctl("-l", os.path.join(os.path.dirname(data), "server.log"), "-w", "-t", "60", "start")
        assert done.returncode == 0, done.stderr
