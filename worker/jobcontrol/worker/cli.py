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
import math
import os
import signal
import sys
from datetime import timedelta

from jobcontrol.errors import InvalidArgument, JobControlError
from jobcontrol.startup import StartupError, open_writable_store
from jobcontrol.store import StoreConfig
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
# A year: past timedelta's range ("inf") a value would crash instead of being refused.
MAX_SECONDS = 366 * 86_400


def _seconds(text: str) -> timedelta:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most a year ({MAX_SECONDS:,}), got {text}")
    return timedelta(seconds=value)


def _poll_interval(args: argparse.Namespace, store: StoreConfig) -> timedelta:
    """The flag, else POLL_INTERVAL_MS, else the backend's default."""
    if isinstance(args.poll_interval, timedelta):
        return args.poll_interval
    millis = os.environ.get("POLL_INTERVAL_MS", "")
    if millis:
        try:
            return _seconds(str(float(millis) / 1000))
        except (ValueError, argparse.ArgumentTypeError):
            raise InvalidArgument(
                "POLL_INTERVAL_MS", f"must be a positive number of milliseconds, got {millis!r}"
            ) from None
    return REMOTE_POLL_INTERVAL if store.remote else LOCAL_POLL_INTERVAL


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobcontrol-worker",
        description="Claim jobs from the store and run their handlers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    StoreConfig.add_arguments(p)
    p.add_argument("--concurrency", type=int, default=DEFAULTS.concurrency, help="jobs at once")
    p.add_argument(
        "--types", default="", help="comma-separated job types to run (default: all with handlers)"
    )
    p.add_argument(
        "--handlers", default="", help="comma-separated modules to import that register handlers"
    )
    p.add_argument("--name", default=DEFAULTS.name, help="name shown in ListWorkers")
    p.add_argument(
        "--lease-timeout",
        type=_seconds,
        default=DEFAULTS.lease_timeout,
        metavar="SECONDS",
        help="a job is re-run elsewhere this long after the worker's last heartbeat",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="default: a third of the lease timeout",
    )
    p.add_argument(
        "--poll-interval",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how often an idle worker looks for work (env POLL_INTERVAL_MS; default 0.05 s"
        " for SQLite, 0.25 s for a remote libSQL store)",
    )
    p.add_argument(
        "--drain-grace",
        type=_seconds,
        default=DEFAULTS.drain_grace,
        metavar="SECONDS",
        help="on SIGTERM, how long running jobs may take to finish before being handed back",
    )
    p.add_argument("--log-level", default=os.environ.get("JOBCONTROL_LOG_LEVEL", "INFO"))
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


async def run(args: argparse.Namespace) -> None:
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
    )
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
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.concurrency < 1:
        print("jobcontrol-worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        load_handler_modules(args.handlers)
    except ImportError as error:
        print(f"jobcontrol-worker: cannot load handlers: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args))
    except StartupError as error:
        print(f"jobcontrol-worker: {error}", file=sys.stderr)
        return 1
    except JobControlError as error:
        print(f"jobcontrol-worker: {error.message}", file=sys.stderr)
        return 1
    return 0
