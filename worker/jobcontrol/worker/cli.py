"""`jobcontrol-worker`: flags, environment, signals; see docs/architecture.md.

The first SIGTERM/SIGINT stops claiming and gives running jobs the drain grace period;
a second one stops them at once. Either way unfinished jobs are handed back (PENDING,
attempt not charged) and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from datetime import timedelta

from jobcontrol.cli_args import ArgumentParser, HelpFormatter, positive_int
from jobcontrol.durations import SYNTAX, duration_arg, format_duration, parse_duration
from jobcontrol.errors import InvalidArgument, JobControlError
from jobcontrol.logs import add_logging_arguments, configure_from_args
from jobcontrol.startup import StartupError, open_writable_store
from jobcontrol.store import StoreConfig
from jobcontrol.worker.fetch_guard import FETCH_ALLOW_ENV, FetchAllowList
from jobcontrol.worker.handlers import default_registry
from jobcontrol.worker.runtime import (
    LOCAL_CANCEL_POLL_INTERVAL,
    LOCAL_POLL_INTERVAL,
    REMOTE_CANCEL_POLL_INTERVAL,
    REMOTE_POLL_INTERVAL,
    Worker,
    WorkerConfig,
)

DEFAULTS = WorkerConfig()

log = logging.getLogger(__name__)


def fetch_allow_entry(text: str) -> str:
    try:
        FetchAllowList.parse([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def _poll_interval(args: argparse.Namespace, store: StoreConfig) -> timedelta:
    """The flag, else POLL_INTERVAL_MS, else the backend's default."""
    if isinstance(args.poll_interval, timedelta):
        return args.poll_interval
    millis = os.environ.get("POLL_INTERVAL_MS", "")
    if millis:
        try:
            return parse_duration(f"{millis}ms")
        except ValueError:
            raise InvalidArgument(
                "POLL_INTERVAL_MS", f"must be a positive number of milliseconds, got {millis!r}"
            ) from None
    return REMOTE_POLL_INTERVAL if store.remote else LOCAL_POLL_INTERVAL


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="jobcontrol-worker",
        description="Claim jobs from the store and run their handlers.",
        epilog=f"{SYNTAX[0].upper()}{SYNTAX[1:]}.",
        formatter_class=HelpFormatter,
    )
    StoreConfig.add_arguments(p)
    p.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        default=DEFAULTS.concurrency,
        help=f"jobs run at once (default: the number of CPUs, {DEFAULTS.concurrency} here)",
    )
    p.add_argument(
        "--types",
        metavar="TYPE,...",
        default="",
        help="job types to run (default: every type with a handler)",
    )
    p.add_argument(
        "--handlers",
        metavar="MODULE,...",
        default="",
        help="modules to import that register handlers, found from the working directory "
        "too (default: only the built-in types)",
    )
    p.add_argument(
        "--name",
        default=DEFAULTS.name,
        help="name shown in ListWorkers (default: HOST:PID)",
    )
    p.add_argument(
        "--fetch-allow",
        action="append",
        type=fetch_allow_entry,
        metavar="HOST_OR_CIDR",
        help="a host name, address or CIDR network that URLs in jobs (media.fetch) may reach"
        " although it is loopback, private, link-local or cloud metadata; repeatable"
        f" (env {FETCH_ALLOW_ENV}, comma-separated; default: none)",
    )
    timing = p.add_argument_group("timing")
    timing.add_argument(
        "--lease-timeout",
        type=duration_arg,
        metavar="DURATION",
        default=DEFAULTS.lease_timeout,
        help="a job is run again elsewhere this long after the worker's last heartbeat",
    )
    timing.add_argument(
        "--heartbeat-interval",
        type=duration_arg,
        metavar="DURATION",
        help="how often the worker renews its leases (default: a third of the lease timeout)",
    )
    timing.add_argument(
        "--poll-interval",
        type=duration_arg,
        metavar="DURATION",
        help="how often an idle worker looks for work (env POLL_INTERVAL_MS, in milliseconds;"
        f" default: {format_duration(LOCAL_POLL_INTERVAL)} for SQLite,"
        f" {format_duration(REMOTE_POLL_INTERVAL)} for a remote libSQL store)",
    )
    timing.add_argument(
        "--drain-grace",
        type=duration_arg,
        metavar="DURATION",
        default=DEFAULTS.drain_grace,
        help="on SIGTERM/SIGINT, how long running jobs may take to finish before being "
        "handed back; a second signal hands them back at once",
    )
    add_logging_arguments(p, os.environ)
    return p


def load_handler_modules(names: str) -> None:
    """Built-ins first, then the user's modules; each registers handlers on import.

    The user's modules are found from the working directory as well, as Celery and RQ
    do: `--handlers myapp.jobs` run from the project folder needs no PYTHONPATH.
    """
    importlib.import_module("jobcontrol.worker.builtin")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in filter(None, (n.strip() for n in names.split(","))):
        importlib.import_module(name)


async def run(args: argparse.Namespace, fetch_allow: FetchAllowList) -> None:
    store_config = StoreConfig.from_args(args)
    config = WorkerConfig(
        name=args.name,
        concurrency=args.concurrency,
        types=tuple(filter(None, (t.strip() for t in args.types.split(",")))),
        lease_timeout=args.lease_timeout,
        heartbeat_interval=args.heartbeat_interval,
        poll_interval=_poll_interval(args, store_config),
        cancel_poll_interval=(
            REMOTE_CANCEL_POLL_INTERVAL if store_config.remote else LOCAL_CANCEL_POLL_INTERVAL
        ),
        drain_grace=args.drain_grace,
        fetch_allow=fetch_allow,
    )
    if fetch_allow != FetchAllowList():
        log.info("URLs in jobs may also reach %s (--fetch-allow)", fetch_allow)
    # A store the worker cannot write to stops it here, with one line, rather than in
    # its claim loop, which would keep retrying.
    store = await open_writable_store(store_config)
    try:
        worker = Worker(store, default_registry, config)
        stop, stop_now = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            (stop_now if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        await worker.run(stop, stop_now)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        fetch_allow = FetchAllowList.from_flags_or_env(args.fetch_allow, os.environ)
    except ValueError as error:
        p.error(f"env {FETCH_ALLOW_ENV}: {error}")
    configure_from_args(p, args)
    try:
        load_handler_modules(args.handlers)
    except ImportError as error:
        print(f"jobcontrol-worker: cannot load handlers: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args, fetch_allow))
    except StartupError as error:
        print(f"jobcontrol-worker: {error}", file=sys.stderr)
        return 1
    except JobControlError as error:
        print(f"jobcontrol-worker: {error.message}", file=sys.stderr)
        return 1
    return 0
