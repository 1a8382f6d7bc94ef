"""Opening the store at start-up, for `jobcontrol-server` and `jobcontrol-worker`.

A store that cannot be used must stop the process at once with one line that names it
and the cause. Without these checks a read-only SQLite file opened fine (its schema was
already up to date, so opening wrote nothing), the server said "listening", and then
every write failed; a directory, or a file in a directory that does not exist, gave
only SQLite's "unable to open database file".
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from jobcontrol.errors import JobControlError, StoreUnavailable
from jobcontrol.store import JobStore, StoreConfig, open_store

# The write probe marks LOST the workers silent for longer than this: none, ever. It is
# still a write statement, which a read-only file or a read-only token refuses.
_PROBE_SILENCE = timedelta(days=100 * 365)


class StartupError(Exception):
    """The process cannot start; the message is one line for stderr."""


def local_path(config: StoreConfig) -> Path | None:
    """The database file for a local or `file:` store; None for a remote one."""
    if config.backend == "local":
        return Path(config.path)
    if config.backend == "turso" and config.url.startswith("file:"):
        text = config.url.removeprefix("file:").split("?", 1)[0]
        return Path(text.removeprefix("//")) if text else None
    return None


def check_location(config: StoreConfig) -> None:
    """Refuse a database path that SQLite could only answer "unable to open" for."""
    path = local_path(config)
    if path is None:
        return
    if path.is_dir():
        raise StartupError(
            f"the database path {path} is a directory; give a file in it, "
            f"e.g. {path / 'jobcontrol.db'}"
        )
    directory = path.parent
    if not directory.is_dir():
        raise StartupError(
            f"the directory of the database {path} does not exist; create {directory} first"
        )


async def open_writable_store(config: StoreConfig, **options: Any) -> JobStore:
    """The store, opened, migrated and shown to accept a write; else StartupError."""
    check_location(config)
    try:
        store = await open_store(config, **options)
    except JobControlError as error:
        raise StartupError(f"cannot open the store: {error.message}") from None
    try:
        await store.mark_lost_workers(silent_for=_PROBE_SILENCE)
    except StoreUnavailable as error:
        await store.close()
        cause = str(error.__cause__ or error.message)
        if local_path(config) is not None:
            raise StartupError(
                f"the database {config.where} cannot be written ({cause}); "
                "check the permissions of the file and its directory"
            ) from None
        raise StartupError(f"the store {config.where} refuses writes ({cause})") from None
    except BaseException:
        await store.close()
        raise
    return store
