"""Both client flavours behind one blocking interface, so one test suite covers both.

`AsyncAsSync` runs an `AsyncJobControlClient` on an event loop in its own thread and
exposes the blocking client's methods; exceptions come through unchanged (the same
objects, with their `__cause__`), and async iterators become iterators that close the
underlying async generator when the test stops iterating.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from jobcontrol.client import AsyncJobControlClient, JobControlClient

T = TypeVar("T")
FLAVOURS = ("sync", "async")


class AsyncAsSync:
    def __init__(self, address: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.client = self._run(_make_async(address, options))
        self.options = self.client.options

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(_next(iterator))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                self._run(aclose())

    def __getattr__(self, name: str) -> Any:
        """The blocking client's method `name`: coroutines are awaited on the loop, async
        iterators (`list`, `watch`, `watch_jobs`) become iterators."""
        method = getattr(self.client, name)
        if name in ("list", "watch", "watch_jobs"):
            return lambda *args, **kwargs: self._iterate(method(*args, **kwargs))
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def close(self) -> None:
        try:
            self._run(self.client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


async def _make_async(address: str, options: dict[str, Any]) -> AsyncJobControlClient:
    return AsyncJobControlClient(address, **options)


async def _next(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()


def make_client(flavour: str, address: str, **options: Any) -> Any:
    """A blocking client, or an asyncio one behind `AsyncAsSync`."""
    if flavour == "sync":
        return JobControlClient(address, **options)
    return AsyncAsSync(address, **options)
