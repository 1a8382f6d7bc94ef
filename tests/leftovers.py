"""What a test process started and must not outlive it (sqld, proxies, PostgreSQL
clusters, PgBouncer): a fixture ends each one normally; a crash or interrupt leaves them
to `end_all` at the session's end and, failing that, to `kill_all` at exit."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Leftovers(Generic[T]):
    def __init__(self, *, end: Callable[[T], object], kill: Callable[[T], object]) -> None:
        self._end = end
        self._kill = kill
        self._items: list[T] = []
        self._lock = threading.Lock()
        atexit.register(self.kill_all)

    def track(self, item: T) -> None:
        with self._lock:
            if item not in self._items:
                self._items.append(item)

    def untrack(self, item: T) -> None:
        with self._lock:
            if item in self._items:
                self._items.remove(item)

    def _newest_first(self) -> list[T]:
        with self._lock:
            return list(reversed(self._items))

    def end_all(self) -> None:
        for item in self._newest_first():
            self._end(item)

    def kill_all(self) -> None:
        for item in self._newest_first():
            self._kill(item)
