"""The store contract suite runs once per driver: every test here takes `store`.

PostgreSQL gets a fresh database per test on one cluster for the session (`postgres_url`).

The remote driver gets a real sqld of its own for each test (the `sqld` fixture): a
start and stop cost about 40 ms, a few seconds over the suite, and buy isolation no
table dropping gives (no stream, connection or lock state carried between tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobcontrol.store.core import SqlJobStore
from jobcontrol.store.libsql import LibsqlJobStore
from jobcontrol.store.postgres import PostgresJobStore
from jobcontrol.store.sqlite import SqliteJobStore
from tests.conftest import ManualClock
from tests.sqld import SqldProcess

DRIVERS = ["sqlite", "libsql-file", "libsql-remote", "postgres"]

# The sqld serving each running test's remote store, by the test's tmp_path, so that a
# test opening a second store on the same database (open_driver) reaches the same one.
_sqld_of_test: dict[Path, SqldProcess] = {}
# Likewise the PostgreSQL database of each running test.
_postgres_of_test: dict[Path, str] = {}


async def open_driver(driver: str, tmp_path: Path, clock: ManualClock) -> SqlJobStore:
    if driver == "sqlite":
        return await SqliteJobStore.open(tmp_path / "jobs.db", clock=clock)
    if driver == "libsql-file":
        return await LibsqlJobStore.open(f"file:{tmp_path / 'jobs.db'}", clock=clock)
    if driver == "libsql-remote":
        sqld = _sqld_of_test[tmp_path]
        return await LibsqlJobStore.open(sqld.url, auth_token=sqld.token, clock=clock)
    if driver == "postgres":
        return await PostgresJobStore.open(_postgres_of_test[tmp_path], clock=clock)
    raise AssertionError(f"unknown driver {driver}")


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def remote_sqld(
    driver: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SqldProcess | None]:
    """This test's sqld when the driver is the remote one (only then is one started)."""
    if driver != "libsql-remote":
        yield None
        return
    sqld: SqldProcess = request.getfixturevalue("sqld")
    _sqld_of_test[tmp_path] = sqld
    try:
        yield sqld
    finally:
        del _sqld_of_test[tmp_path]


@pytest.fixture
def postgres_database(
    driver: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str | None]:
    """This test's PostgreSQL database when the driver is postgres."""
    if driver != "postgres":
        yield None
        return
    url: str = request.getfixturevalue("postgres_url")
    _postgres_of_test[tmp_path] = url
    try:
        yield url
    finally:
        del _postgres_of_test[tmp_path]


@pytest.fixture
async def store(
    driver: str,
    tmp_path: Path,
    clock: ManualClock,
    remote_sqld: SqldProcess | None,
    postgres_database: str | None,
) -> AsyncIterator[SqlJobStore]:
    opened = await open_driver(driver, tmp_path, clock)
    try:
        yield opened
    finally:
        await opened.close()
