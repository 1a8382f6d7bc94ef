"""`jobcontrol-server`: flags, environment, logging; see docs/architecture.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from jobcontrol.cli_args import ArgumentParser, HelpFormatter, positive_int
from jobcontrol.durations import SYNTAX, duration_arg, format_duration
from jobcontrol.errors import JobControlError
from jobcontrol.logs import add_logging_arguments, configure_from_args
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
from jobcontrol.server.processes import LogSettings, Supervisor, SupervisorError
from jobcontrol.startup import StartupError
from jobcontrol.store import StoreConfig
from jobcontrol.worker.cli import fetch_allow_entry
from jobcontrol.worker.fetch_guard import FETCH_ALLOW_ENV, FetchAllowList
from jobcontrol.worker.runtime import WorkerConfig

LOCAL_TAIL_INTERVAL = 0.05
REMOTE_TAIL_INTERVAL = 0.2
_SIZE = re.compile(r"(\d+)\s*(KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
SIZE_SYNTAX = "a size is a number of bytes, or of KiB, MiB or GiB: 512KiB, 24MiB"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def env_switch(p: argparse.ArgumentParser, env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in _ON + _OFF:
        p.error(f"env {name} must be 1 or 0, got {value!r}")
    return value in _ON


def byte_size(text: str) -> int:
    """`1048576`, `512KiB`, `24MiB`, `1GiB`."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 24MiB)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = ArgumentParser(
        prog="jobcontrol-server",
        description="Serve jobcontrol.v1.JobControl (plus health and reflection) on one store.",
        epilog=f"{SYNTAX[0].upper()}{SYNTAX[1:]}; {SIZE_SYNTAX}.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=env.get("JOBCONTROL_LISTEN", "127.0.0.1:50051"),
        help="address to serve on; port 0 picks a free one (env JOBCONTROL_LISTEN)",
    )
    p.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        default=env.get("JOBCONTROL_PROCESSES", "1"),
        help="server processes sharing the port, to use N cores; each has the load limits "
        "below; the first alone runs the reaper, retention, metrics and --with-worker; one "
        "that dies is restarted (env JOBCONTROL_PROCESSES)",
    )
    StoreConfig.add_arguments(p)
    p.add_argument(
        "--reject-unserved-types",
        action="store_true",
        default=env_switch(p, env, "JOBCONTROL_REJECT_UNSERVED_TYPES"),
        help="refuse a submit (FAILED_PRECONDITION) whose job type no live worker serves, "
        "instead of accepting it with a warning; a SubmitJobs batch is refused whole "
        "(env JOBCONTROL_REJECT_UNSERVED_TYPES=1)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default=env.get("JOBCONTROL_METRICS_LISTEN"),
        help="address for the Prometheus /metrics endpoint (env JOBCONTROL_METRICS_LISTEN)",
    )
    p.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        default=env.get("JOBCONTROL_HTTP_LISTEN"),
        help="also serve the API over HTTP for browsers and curl (Connect and gRPC-Web, "
        "HTTP/1.1 and HTTP/2), with the same tokens and TLS; off by default "
        "(env JOBCONTROL_HTTP_LISTEN)",
    )
    p.add_argument(
        "--http-cors-origin",
        metavar="ORIGIN",
        action="append",
        help="an origin whose web pages may call --http-listen, e.g. http://localhost:3000; "
        "repeatable (env JOBCONTROL_HTTP_CORS_ORIGINS, comma-separated)",
    )
    p.add_argument(
        "--auth-tokens-file",
        metavar="FILE",
        default=env.get("JOBCONTROL_AUTH_TOKENS_FILE"),
        help="file of accepted bearer tokens, one per line (env JOBCONTROL_AUTH_TOKENS_FILE; "
        "a single token can also come from env JOBCONTROL_AUTH_TOKEN)",
    )
    p.add_argument("--tls-cert", metavar="FILE", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", metavar="FILE", type=Path, help="PEM private key for --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        type=Path,
        help="PEM CA bundle: require client certificates (mTLS)",
    )
    timing = p.add_argument_group("timing")
    timing.add_argument(
        "--tail-interval",
        type=duration_arg,
        metavar="DURATION",
        help="how often to read events written by other processes while someone watches "
        f"(default {format_duration(LOCAL_TAIL_INTERVAL)} for SQLite, "
        f"{format_duration(REMOTE_TAIL_INTERVAL)} for a remote libSQL store)",
    )
    timing.add_argument(
        "--reap-interval",
        type=duration_arg,
        metavar="DURATION",
        default=timedelta(seconds=1),
        help="how often to hand back jobs whose lease expired, end attempts past their "
        "timeout, and mark silent workers LOST",
    )
    timing.add_argument(
        "--worker-lost-after",
        type=duration_arg,
        metavar="DURATION",
        default=timedelta(seconds=60),
        help="mark a worker LOST after this long without a heartbeat",
    )
    timing.add_argument(
        "--retention",
        type=duration_arg,
        metavar="DURATION",
        default=timedelta(days=7),
        help="prune finished jobs and their events older than this",
    )
    timing.add_argument(
        "--prune-interval",
        type=duration_arg,
        metavar="DURATION",
        default=timedelta(hours=1),
        help="how often to prune what --retention lets go",
    )
    worker = p.add_argument_group("in-process worker (local setup)")
    worker.add_argument(
        "--with-worker",
        action="store_true",
        help="also run a worker with the built-in job types in this process",
    )
    worker.add_argument(
        "--worker-drain-grace",
        type=duration_arg,
        metavar="DURATION",
        default=WorkerConfig().drain_grace,
        help="on SIGTERM/SIGINT, how long its running jobs may take to finish before being "
        "handed back; a second signal hands them back at once",
    )
    worker.add_argument(
        "--worker-fetch-allow",
        action="append",
        type=fetch_allow_entry,
        metavar="HOST_OR_CIDR",
        help="as jobcontrol-worker --fetch-allow: a host, address or CIDR network that URLs "
        "in its jobs (media.fetch) may reach although it is loopback, private, link-local "
        f"or cloud metadata; repeatable (env {FETCH_ALLOW_ENV}, comma-separated; "
        "default: none)",
    )
    limits = p.add_argument_group("load limits (past one, calls get RESOURCE_EXHAUSTED)")
    limits.add_argument(
        "--max-concurrent-rpcs",
        type=positive_int,
        metavar="N",
        default=env.get("JOBCONTROL_MAX_CONCURRENT_RPCS", str(DEFAULT_MAX_CONCURRENT_RPCS)),
        help="unary calls handled at once; health checks are never refused "
        "(env JOBCONTROL_MAX_CONCURRENT_RPCS)",
    )
    limits.add_argument(
        "--max-streams",
        type=positive_int,
        metavar="N",
        default=env.get("JOBCONTROL_MAX_STREAMS", str(DEFAULT_MAX_STREAMS)),
        help="WatchJob and WatchJobs streams open at once (env JOBCONTROL_MAX_STREAMS)",
    )
    limits.add_argument(
        "--max-request-bytes-in-flight",
        type=byte_size,
        metavar="SIZE",
        default=env.get(
            "JOBCONTROL_MAX_REQUEST_BYTES_IN_FLIGHT",
            f"{DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT // 1024**2}MiB",
        ),
        help="bytes of unary requests handled at once; a request is always taken when "
        "nothing else is in flight (env JOBCONTROL_MAX_REQUEST_BYTES_IN_FLIGHT)",
    )
    add_logging_arguments(p, env)
    return p


def _worker_fetch_allow(args: argparse.Namespace) -> FetchAllowList:
    try:
        return FetchAllowList.from_flags_or_env(args.worker_fetch_allow, os.environ)
    except ValueError as error:
        raise SystemExit(f"jobcontrol-server: env {FETCH_ALLOW_ENV}: {error}") from None


_ORIGIN = re.compile(r"https?://[^/\s]+")


def _cors_origins(flags: list[str] | None) -> tuple[str, ...]:
    """The flags' origins, or else the environment's; each `scheme://host[:port]`, as a
    browser sends it in `Origin`."""
    given = flags or os.environ.get("JOBCONTROL_HTTP_CORS_ORIGINS", "").split(",")
    origins = tuple(origin.strip().rstrip("/") for origin in given if origin.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise SystemExit(
                f"jobcontrol-server: --http-cors-origin {origin!r} is not an origin like "
                "http://localhost:3000 (scheme, host and port, no path)"
            )
    return origins


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
        http_listen = (
            ListenAddress.parse(args.http_listen, flag="--http-listen")
            if args.http_listen
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
        http_listen=http_listen,
        http_cors_origins=_cors_origins(args.http_cors_origin),
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
        reject_unserved_types=args.reject_unserved_types,
        with_worker=args.with_worker,
        worker_drain_grace=args.worker_drain_grace,
        worker_fetch_allow=_worker_fetch_allow(args),
    )


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    configure_from_args(p, args)
    config = config_from_args(args)
    try:
        if args.processes > 1:
            logs = LogSettings(args.log_level, args.log_format)
            return Supervisor(config, args.processes, logs).run()
        asyncio.run(serve(config))
    except (ListenError, StartupError, SupervisorError) as error:
        print(f"jobcontrol-server: {error}", file=sys.stderr)
        return 1
    except JobControlError as error:
        print(f"jobcontrol-server: {error.message}", file=sys.stderr)
        return 1
    return 0
