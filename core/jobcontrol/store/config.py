"""Which store to open, from flags or the environment (DESIGN §3)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobcontrol.errors import InvalidArgument
from jobcontrol.store.protocol import JobStore

BACKENDS = ("local",)
DEFAULT_PATH = "./jobcontrol.db"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "local"
    path: str = DEFAULT_PATH

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StoreConfig:
        return cls(
            backend=environ.get("JOB_STORE_BACKEND", "local"),
            path=environ.get("JOB_STORE_PATH", DEFAULT_PATH),
        )

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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StoreConfig:
        return cls(backend=args.store_backend, path=args.store_path)


async def open_store(config: StoreConfig, **options: Any) -> JobStore:
    if config.backend == "local":
        from jobcontrol.store.sqlite import SqliteJobStore

        return await SqliteJobStore.open(config.path, **options)
    raise InvalidArgument(
        "JOB_STORE_BACKEND", f"must be one of {', '.join(BACKENDS)}; got {config.backend!r}"
    )
