"""Which store to open, from flags or the environment (see docs/architecture.md)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobcontrol.errors import InvalidArgument
from jobcontrol.store.protocol import JobStore

REMOTE_SCHEMES = ("libsql://", "https://", "http://", "wss://", "ws://")

BACKENDS = ("local", "turso", "postgres")
DEFAULT_PATH = "./jobcontrol.db"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "local"
    path: str = DEFAULT_PATH
    url: str = field(default="", repr=False)
    auth_token: str = field(default="", repr=False)
    poll_only: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StoreConfig:
        backend = environ.get("JOB_STORE_BACKEND", "local")
        url_variable = "DATABASE_URL" if backend == "postgres" else "TURSO_DATABASE_URL"
        return cls(
            backend=backend,
            path=environ.get("JOB_STORE_PATH", DEFAULT_PATH),
            url=environ.get(url_variable, ""),
            auth_token=environ.get("TURSO_AUTH_TOKEN", ""),
            poll_only=_flag(environ, "JOB_STORE_POLL_ONLY"),
        )

    @property
    def remote(self) -> bool:
        """Reached over the network (a longer default poll interval suits it)."""
        if self.backend == "postgres":
            return True
        return self.backend == "turso" and self.url.startswith(REMOTE_SCHEMES)

    @property
    def where(self) -> str:
        """Where the data lives, without credentials, for logs."""
        if self.backend == "local":
            return self.path
        return re.sub(r"//[^@/]*@", "//", self.url)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        defaults = StoreConfig.from_env()
        group = parser.add_argument_group("store")
        group.add_argument(
            "--store-backend",
            default=defaults.backend,
            help="store driver (env JOB_STORE_BACKEND; default %(default)s)",
        )
        group.add_argument(
            "--store-path",
            default=defaults.path,
            help="SQLite file for the local backend (env JOB_STORE_PATH; default %(default)s)",
        )
        group.add_argument(
            "--store-url",
            default=None,
            help="libSQL URL for the turso backend: libsql://, https://, http:// or file: "
            "(env TURSO_DATABASE_URL; the token comes from env TURSO_AUTH_TOKEN); "
            "PostgreSQL URL for the postgres backend, postgresql://user@host/db "
            "(env DATABASE_URL)",
        )
        group.add_argument(
            "--store-poll-only",
            action="store_true",
            default=defaults.poll_only,
            help="postgres: the database is reached through a transaction-mode pooler "
            "such as PgBouncer, so poll instead of LISTEN and prepare no statements "
            "(env JOB_STORE_POLL_ONLY=1)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StoreConfig:
        """The URL's variable depends on the backend, which a flag may have chosen."""
        url = args.store_url
        if url is None:
            variable = "DATABASE_URL" if args.store_backend == "postgres" else "TURSO_DATABASE_URL"
            url = os.environ.get(variable, "")
        return cls(
            backend=args.store_backend,
            path=args.store_path,
            url=url,
            auth_token=os.environ.get("TURSO_AUTH_TOKEN", ""),
            poll_only=args.store_poll_only,
        )


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise InvalidArgument(name, f"must be 1 or 0, got {value!r}")


async def open_store(config: StoreConfig, **options: Any) -> JobStore:
    if config.backend == "local":
        from jobcontrol.store.sqlite import SqliteJobStore

        return await SqliteJobStore.open(config.path, **options)
    if config.backend == "turso":
        if not config.url:
            raise InvalidArgument(
                "TURSO_DATABASE_URL", "is required for the turso backend (or --store-url)"
            )
        from jobcontrol.store.libsql import LibsqlJobStore

        return await LibsqlJobStore.open(
            config.url, auth_token=config.auth_token or None, **options
        )
    if config.backend == "postgres":
        if not config.url:
            raise InvalidArgument(
                "DATABASE_URL", "is required for the postgres backend (or --store-url)"
            )
        from jobcontrol.store.postgres import PostgresJobStore

        return await PostgresJobStore.open(config.url, poll_only=config.poll_only, **options)
    raise InvalidArgument(
        "JOB_STORE_BACKEND", f"must be one of {', '.join(BACKENDS)}; got {config.backend!r}"
    )
