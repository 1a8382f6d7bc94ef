"""The store contract suite runs once per driver: every test here takes `store`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobcontrol.store.core import SqlJobStore
from jobcontrol.store.libsql import LibsqlJobStore
from jobcontrol.store.sqlite import SqliteJobStore
from tests.conftest import ManualClock

DRIVERS = ["sqlite", "libsql-file"]


async def open_driver(driver: str, tmp_path: Path, clock: ManualClock) -> SqlJobStore:
    if driver == "sqlite":
        return await SqliteJobStore.open(tmp_path / "jobs.db", clock=clock)
    if driver == "libsql-file":
        return await LibsqlJobStore.open(f"file:{tmp_path / 'jobs.db'}", clock=clock)
    raise AssertionError(f"unknown driver {driver}")


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
