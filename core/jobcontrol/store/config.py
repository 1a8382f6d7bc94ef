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

BACKENDS = ("local", "turso")
DEFAULT_PATH = "./jobcontrol.db"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "local"
    path: str = DEFAULT_PATH
    url: str = ""
    auth_token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StoreConfig:
        return cls(
            backend=environ.get("JOB_STORE_BACKEND", "local"),
            path=environ.get("JOB_STORE_PATH", DEFAULT_PATH),
            url=environ.get("TURSO_DATABASE_URL", ""),
            auth_token=environ.get("TURSO_AUTH_TOKEN", ""),
        )

    @property
    def remote(self) -> bool:
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
            default=defaults.url,
            help="libSQL URL for the turso backend: libsql://, https://, http:// or file: "
            "(env TURSO_DATABASE_URL; the token comes from env TURSO_AUTH_TOKEN)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StoreConfig:
        return cls(
            backend=args.store_backend,
            path=args.store_path,
            url=args.store_url,
            auth_token=os.environ.get("TURSO_AUTH_TOKEN", ""),
        )


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
    raise InvalidArgument(
        "JOB_STORE_BACKEND", f"must be one of {', '.join(BACKENDS)}; got {config.backend!r}"
    )
