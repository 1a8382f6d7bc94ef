"""`jobcontrol-server`: flags, environment, logging; see docs/architecture.md."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from datetime import timedelta
from pathlib import Path

from jobcontrol.errors import JobControlError
from jobcontrol.server.admission import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT,
    DEFAULT_MAX_STREAMS,
    LoadLimits,
)
from jobcontrol.server.app import ServerConfig, TlsConfig, serve
from jobcontrol.server.auth import load_tokens
from jobcontrol.server.housekeeping import HousekeepingConfig
from jobcontrol.server.listen import ListenAddress, ListenError
from jobcontrol.startup import StartupError
from jobcontrol.store import StoreConfig

LOCAL_TAIL_INTERVAL = 0.05
REMOTE_TAIL_INTERVAL = 0.2
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"(\d+)\s*(KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def duration(text: str) -> timedelta:
    """`90`, `1.5s`, `250ms`, `5m`, `2h`, `7d`."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 5m, 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def byte_size(text: str) -> int:
    """`1048576`, `512KiB`, `24MiB`, `1GiB`."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 24MiB)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="jobcontrol-server",
        description="Serve jobcontrol.v1.JobControl (plus health and reflection) on one store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--listen",
        default=env.get("JOBCONTROL_LISTEN", "127.0.0.1:50051"),
        help="host:port to serve on; port 0 picks a free one (env JOBCONTROL_LISTEN)",
    )
    StoreConfig.add_arguments(p)
    p.add_argument(
        "--with-worker",
        action="store_true",
        help="also run a worker with the built-in job types in this process (local setup)",
    )
    p.add_argument(
        "--metrics-listen",
        default=env.get("JOBCONTROL_METRICS_LISTEN"),
        help="host:port for the Prometheus /metrics endpoint (env JOBCONTROL_METRICS_LISTEN)",
    )
    p.add_argument(
        "--auth-tokens-file",
        default=env.get("JOBCONTROL_AUTH_TOKENS_FILE"),
        help="file of accepted bearer tokens, one per line (env JOBCONTROL_AUTH_TOKENS_FILE; "
        "a single token can also come from env JOBCONTROL_AUTH_TOKEN)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client certs (mTLS)")
    p.add_argument(
        "--tail-interval",
        type=duration,
        default=None,
        help="how often to read events written by other processes while someone watches "
        "(default 50ms for SQLite, 200ms for a remote libSQL store)",
    )
    p.add_argument("--reap-interval", type=duration, default=duration("1s"))
    p.add_argument(
        "--worker-lost-after",
        type=duration,
        default=duration("60s"),
        help="mark a worker LOST after this long without a heartbeat",
    )
    p.add_argument(
        "--retention",
        type=duration,
        default=duration("7d"),
        help="prune finished jobs and their events older than this",
    )
    p.add_argument("--prune-interval", type=duration, default=duration("1h"))
    limits = p.add_argument_group("load limits (past one, calls get RESOURCE_EXHAUSTED)")
    limits.add_argument(
        "--max-concurrent-rpcs",
        type=positive_int,
        default=env.get("JOBCONTROL_MAX_CONCURRENT_RPCS", str(DEFAULT_MAX_CONCURRENT_RPCS)),
        help="unary calls handled at once; health checks are never refused "
        "(env JOBCONTROL_MAX_CONCURRENT_RPCS)",
    )
    limits.add_argument(
        "--max-streams",
        type=positive_int,
        default=env.get("JOBCONTROL_MAX_STREAMS", str(DEFAULT_MAX_STREAMS)),
        help="WatchJob and WatchJobs streams open at once (env JOBCONTROL_MAX_STREAMS)",
    )
    limits.add_argument(
        "--max-request-bytes-in-flight",
        type=byte_size,
        default=env.get(
            "JOBCONTROL_MAX_REQUEST_BYTES_IN_FLIGHT",
            f"{DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT // 1024**2}MiB",
        ),
        help="bytes of unary requests handled at once; a request is always taken when "
        "nothing else is in flight (env JOBCONTROL_MAX_REQUEST_BYTES_IN_FLIGHT)",
    )
    p.add_argument("--log-level", default=env.get("JOBCONTROL_LOG_LEVEL", "INFO"))
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("jobcontrol-server: --tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("jobcontrol-server: --tls-client-ca needs --tls-cert and --tls-key")
    try:
        tokens = load_tokens(os.environ.get("JOBCONTROL_AUTH_TOKEN"), args.auth_tokens_file)
    except OSError as error:
        raise SystemExit(f"jobcontrol-server: cannot read tokens file: {error}") from None
    if args.auth_tokens_file and not tokens:
        # Serving without auth because a file is empty would be a silent security hole.
        raise SystemExit(f"jobcontrol-server: {args.auth_tokens_file} contains no tokens")
    for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
        if path is not None and not os.access(path, os.R_OK):
            raise SystemExit(f"jobcontrol-server: cannot read {path}")
    try:
        listen = ListenAddress.parse(args.listen)
        metrics_listen = (
            ListenAddress.parse(args.metrics_listen, flag="--metrics-listen")
            if args.metrics_listen
            else None
        )
    except ListenError as error:
        raise SystemExit(f"jobcontrol-server: {error}") from None
    store = StoreConfig.from_args(args)
    return ServerConfig(
        listen=listen,
        store=store,
        tokens=tuple(tokens),
        tls=TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        metrics_listen=metrics_listen,
        limits=LoadLimits(
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_streams=args.max_streams,
            max_request_bytes_in_flight=args.max_request_bytes_in_flight,
        ),
        tail_interval=args.tail_interval.total_seconds()
        if args.tail_interval
        else (REMOTE_TAIL_INTERVAL if store.remote else LOCAL_TAIL_INTERVAL),
        housekeeping=HousekeepingConfig(
            reap_interval=args.reap_interval.total_seconds(),
            worker_lost_after=args.worker_lost_after,
            retention=args.retention,
            prune_interval=args.prune_interval.total_seconds(),
        ),
        with_worker=args.with_worker,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = config_from_args(args)
    try:
        asyncio.run(serve(config))
    except (ListenError, StartupError) as error:
        print(f"jobcontrol-server: {error}", file=sys.stderr)
        return 1
    except JobControlError as error:
        print(f"jobcontrol-server: {error.message}", file=sys.stderr)
        return 1
    return 0
