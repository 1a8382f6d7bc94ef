"""The store contract suite runs once per driver: every test here takes `store`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobcontrol.store.core import SqlJobStore
from jobcontrol.store.database import Tx
from jobcontrol.store.libsql import LibsqlJobStore
from jobcontrol.store.sqlite import SqliteJobStore
from tests.conftest import ManualClock
from tests.hrana_server import HranaProcess

DRIVERS = ["sqlite", "libsql-file", "libsql-remote"]
TOKEN = "contract-suite-token"


def remote_database(tmp_path: Path) -> tuple[str, str | None]:
    """The remote database for this test: a real sqld when TURSO_TEST_URL is set (its
    tables are dropped first), else a Hrana test server on a file in tmp_path."""
    url = os.environ.get("TURSO_TEST_URL")
    if url:
        return url, os.environ.get("TURSO_TEST_TOKEN")
    marker = tmp_path / "hrana.url"
    if not marker.exists():
        server = HranaProcess(tmp_path / "remote.db", token=TOKEN).start()
        _hrana_servers.append(server)
        marker.write_text(server.url)
    return marker.read_text(), TOKEN


_hrana_servers: list[HranaProcess] = []


@pytest.fixture(autouse=True)
def _stop_hrana_servers() -> Iterator[None]:
    yield
    while _hrana_servers:
        _hrana_servers.pop().stop()


async def open_driver(driver: str, tmp_path: Path, clock: ManualClock) -> SqlJobStore:
    if driver == "sqlite":
        return await SqliteJobStore.open(tmp_path / "jobs.db", clock=clock)
    if driver == "libsql-file":
        return await LibsqlJobStore.open(f"file:{tmp_path / 'jobs.db'}", clock=clock)
    if driver == "libsql-remote":
        url, token = remote_database(tmp_path)
        if os.environ.get("TURSO_TEST_URL") and not (tmp_path / "reset").exists():
            (tmp_path / "reset").touch()
            await _drop_everything(url, token)
        return await LibsqlJobStore.open(url, auth_token=token, clock=clock)
    raise AssertionError(f"unknown driver {driver}")


async def _drop_everything(url: str, token: str | None) -> None:
    store = await LibsqlJobStore.open(url, auth_token=token)
    try:
        await store._db.transaction(_drop_tables)
    finally:
        await store.close()


def _drop_tables(tx: Tx) -> None:
    for table in ("job_events", "jobs", "workers", "schema_migrations"):
        tx.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(driver: str, tmp_path: Path, clock: ManualClock) -> AsyncIterator[SqlJobStore]:
    opened = await open_driver(driver, tmp_path, clock)
    try:
        yield opened
    finally:
        await opened.close()
