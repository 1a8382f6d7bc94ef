"""The seam between the SQL core and a driver: a transaction that runs statements.

A driver (SQLite, libSQL) only knows how to connect, run one statement, and hold a
transaction; every SQL statement lives in the core. Core operations are plain functions
of a `Tx`, run whole inside one transaction by `Database.run`, so a driver may retry
them after a transient failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Row = Mapping[str, Any]
Params = Mapping[str, Any] | Sequence[Any]


class Tx(Protocol):
    def execute(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement; rows come back as mappings of column name to value."""
        ...

    def executemany(self, sql: str, params: Sequence[Params]) -> None: ...


class Database(Protocol):
    async def run(
        self, fn: Callable[[Tx], T], *, write: bool, atomic: bool = True, quick: bool = False
    ) -> T:
        """Run `fn` in one transaction (a write transaction takes the write lock up
        front), commit, and return its result; roll back if it raises.

        `atomic=False` says `fn` is correct without a transaction (each of its writes is
        one self-contained statement): a driver may then run it in autocommit mode.
        `quick=True` says `fn` touches a few rows by index: a local driver may run it on
        the caller's thread when it can do so without waiting for a lock."""
        ...

    async def close(self) -> None: ...
