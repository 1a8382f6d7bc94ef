"""Waiting by polling with a deadline, never a bare sleep. Its own module (re-exported by
tests/conftest.py) so that helpers run outside pytest, such as tests/sqld.py, can use it
without importing the fixtures."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Poll until `condition` returns something truthy (which is returned), or fail after
    `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 (the condition's deadline, as in wait_until)
    interval: float = 0.01,
    what: str = "",
) -> T:
    """`wait_until` on the event loop; `condition` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)
