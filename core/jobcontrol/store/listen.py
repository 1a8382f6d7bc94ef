"""Pushed wake-ups from PostgreSQL: one LISTEN connection per store, on the event loop.

The event trigger notifies after each committing transaction (see `sql/postgres.py`);
this turns notifications into calls of the subscribers' callbacks, which only wake a
loop (a tailer, an idle worker, a cancel check) that then reads the store as it would
have on its next poll. So a lost notification costs latency, never data: while the
connection is down `live` is False and those loops poll at their usual interval, and
on every (re)connect subscribers hear `None`, "anything may have changed".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import psycopg

from jobcontrol.store.protocol import ChangeKind

log = logging.getLogger(__name__)

# How long the connection may stay silent before it is asked to answer: a half-open TCP
# connection delivers nothing and raises nothing.
CHECK_INTERVAL = 5.0
APPLICATION_NAME = "jobcontrol-listen"

Callback = Callable[[ChangeKind | None], None]


class PostgresListener:
    """`subscribe` starts listening on first use; `close` stops it."""

    def __init__(self, url: str, channel: str, *, check_interval: float = CHECK_INTERVAL) -> None:
        self._url = url
        self._channel = channel
        self._check_interval = check_interval
        self._callbacks: list[Callback] = []
        self._task: asyncio.Task[None] | None = None
        self._live = False

    @property
    def live(self) -> bool:
        """Listening now: notifications arrive, so polling can slow to a backstop."""
        return self._live

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call `callback` on the event loop for each notification; returns the
        function that unsubscribes."""
        self._callbacks.append(callback)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen(), name="postgres-listen"
            )

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def _dispatch(self, kind: ChangeKind | None) -> None:
        for callback in list(self._callbacks):
            try:
                callback(kind)
            except Exception:  # one subscriber's bug must not stop the others' wake-ups
                log.exception("change notification callback failed")

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    application_name=APPLICATION_NAME,
                    connect_timeout=10,
                )
                async with conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    self._live = True
                    delay = 0.1
                    log.info("listening for changes on PostgreSQL channel %s", self._channel)
                    self._dispatch(None)
                    while True:
                        async for notify in conn.notifies(timeout=self._check_interval):
                            self._dispatch(_kind(notify.payload))
                        await conn.execute("SELECT 1")
            except psycopg.Error as error:
                if self._live:
                    log.warning(
                        "lost the PostgreSQL LISTEN connection (%s); polling until back", error
                    )
                else:
                    log.debug("PostgreSQL LISTEN connection failed: %s", error)
            finally:
                self._live = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._callbacks.clear()


def _kind(payload: str) -> ChangeKind:
    try:
        return ChangeKind(payload)
    except ValueError:
        return ChangeKind.EVENT
