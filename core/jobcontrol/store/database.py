"""The seam between the SQL core and a driver.

The core says what an operation is; the driver decides how to run it:

- `read`: statements that only read.
- `write`: one self-contained statement, atomic on its own.
- `change`: read, decide in Python, then write with statements fenced on what was read
  (a row version, a lease). A fenced write that finds its row changed raises `Conflict`
  and the driver runs the whole function again on fresh data.
- `transaction`: several writes that must commit or roll back together.

`small=True` says the operation touches a few rows by index. Every operation is a
coroutine function of a `Tx` and may run more than once (after a transient failure, or a
conflict), so it must have no effects outside the `Tx`. A driver with an asynchronous
client awaits its statements on the event loop; one whose calls block (a local file, a
synchronous client) runs the whole operation on its own thread with `run_blocking`,
since its `Tx` never suspends. PostgreSQL does either, by the operation's size.

A local SQLite file runs every kind as a transaction (BEGIN/COMMIT cost nothing there
and serialize writers). A remote server runs reads, writes and changes statement by
statement, one round trip each, and pays for BEGIN/COMMIT only for a `transaction`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Row = Mapping[str, Any]
Params = Mapping[str, Any] | Sequence[Any]


class Conflict(Exception):
    """A fenced write found its row changed since the read its change was computed from."""


class Tx(Protocol):
    @property
    def sql(self) -> ModuleType:
        """The statements in this database's dialect (a module of `jobcontrol.store.sql`)."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement; rows come back as mappings of column name to value."""
        ...


Operation = Callable[[Tx], Awaitable[T]]


def run_blocking(operation: Awaitable[T]) -> T:
    """Run an operation over a `Tx` whose `execute` never suspends, to its end, in the
    calling thread (no event loop: a blocking driver calls this in its own thread)."""
    assert isinstance(operation, Coroutine)
    try:
        operation.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    operation.close()
    raise RuntimeError("an operation suspended on a blocking driver's Tx")


class Database(Protocol):
    async def read(self, fn: Operation[T], *, small: bool = False) -> T: ...

    async def write(self, fn: Operation[T], *, small: bool = False) -> T:
        """`fn` runs exactly one statement."""
        ...

    async def change(self, fn: Operation[T], *, small: bool = False) -> T: ...

    async def transaction(self, fn: Operation[T]) -> T: ...

    async def close(self) -> None: ...
