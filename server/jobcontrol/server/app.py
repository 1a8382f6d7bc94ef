"""Assembles one server process: store, EventHub, gRPC service, health, reflection,
auth, TLS, metrics, housekeeping and the optional HTTP listener (Connect and gRPC-Web
for browsers, the same service); runs until SIGTERM/SIGINT.

Start-up binds the port first and opens the store second, so a taken port leaves the
database untouched; a store that cannot be written stops the server before it says
"listening" (`jobcontrol.startup`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jobcontrol.durations import format_duration
from jobcontrol.server import registration
from jobcontrol.server.admission import Admission, LoadLimits
from jobcontrol.server.auth import BearerTokenAuth, Tokens
from jobcontrol.server.calls import Calls
from jobcontrol.server.housekeeping import Housekeeper, HousekeepingConfig
from jobcontrol.server.http import HttpListener, http_app
from jobcontrol.server.hub import EventHub, waking
from jobcontrol.server.listen import ListenAddress, ListenError
from jobcontrol.server.metrics import Metrics, metered
from jobcontrol.server.served import ServedTypes
from jobcontrol.server.service import JobControlService
from jobcontrol.startup import open_writable_store
from jobcontrol.store import JobStore, StoreConfig
from jobcontrol.v1 import job_control_pb2
from jobcontrol.worker.fetch_guard import FetchAllowList

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Calls gRPC's core may hold before the application takes them: past the soft limit it
# cancels new ones at random, past the hard one all (defaults 1,000 and 3,000). When a
# server restarts, every watcher reconnects at once: 10,000 WatchJob calls opened
# together had 56% CANCELLED with the defaults and none with these.
MAX_PENDING_CALLS = 20_000
MAX_PENDING_CALLS_HARD_LIMIT = 30_000
SHUTDOWN_GRACE_SECONDS = 5.0
DEFAULT_LISTEN = ListenAddress("127.0.0.1", 50051)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class Replica:
    """This process is one of `--processes N` sharing one port (processes.py). The
    primary (index 0) alone runs the reaper, retention, job counts, metrics, the HTTP
    listener and the in-process worker: they are safe in many replicas, but N copies on
    one machine only add work (and N /metrics or HTTP endpoints would each need a
    port)."""

    index: int
    count: int

    @property
    def primary(self) -> bool:
        return self.index == 0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: ListenAddress = DEFAULT_LISTEN
    store: StoreConfig = field(default_factory=StoreConfig)
    tokens: tuple[str, ...] = ()
    tls: TlsConfig | None = None
    metrics_listen: ListenAddress | None = None
    # The API over HTTP for browsers (Connect, gRPC-Web); off when None.
    http_listen: ListenAddress | None = None
    # Origins whose pages may call the HTTP listener (CORS), e.g. http://localhost:3000.
    http_cors_origins: tuple[str, ...] = ()
    limits: LoadLimits = field(default_factory=LoadLimits)
    tail_interval: float = 0.05
    housekeeping: HousekeepingConfig = field(default_factory=HousekeepingConfig)
    reject_unserved_types: bool = False
    with_worker: bool = False
    # How long the in-process worker's running jobs may take to finish at shutdown; the
    # CLI defaults it to the standalone worker's --drain-grace.
    worker_drain_grace: timedelta = timedelta(seconds=30)
    # Hosts and networks the in-process worker's media.fetch jobs may reach.
    worker_fetch_allow: FetchAllowList = field(default_factory=FetchAllowList)
    # Set in each process of `--processes N`: binds with SO_REUSEPORT to the port its
    # supervisor has checked and holds.
    replica: Replica | None = None


GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # No bandwidth probes: a stream's receive window stays at HTTP/2's 64 KiB until its
    # request is read (then it opens to the message's size), instead of growing to
    # megabytes. So a call waiting for admission (admission.py) holds 64 KiB of its
    # request, not all of it.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD_LIMIT),
]
# For the processes of `--processes N`: the kernel spreads connections over them. Their
# supervisor has made sure that the port was free, and keeps it until they listen.
SHARED_PORT_GRPC_OPTIONS = [("grpc.so_reuseport", 1), *GRPC_OPTIONS[1:]]


def _credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    client_ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def describe(config: ServerConfig) -> str:
    """What a server serves, for its "listening on" line."""
    return ", ".join(
        (
            ("mTLS" if config.tls.client_ca else "TLS") if config.tls else "plaintext",
            f"{len(config.tokens)} auth token(s)" if config.tokens else "no auth",
            f"store {config.store.backend} {config.store.where}",
        )
    )


async def serve(
    config: ServerConfig,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT arrives); `on_listening` gets the port
    once calls are served. Raises ListenError or StartupError, with a one-line message,
    if the server cannot start."""
    stop = stop or asyncio.Event()
    metrics = Metrics()
    tokens = (
        Tokens(
            config.tokens,
            on_denied=lambda method: metrics.observe_rpc(
                method, grpc.StatusCode.UNAUTHENTICATED, 0.0
            ),
        )
        if config.tokens
        else None
    )
    interceptors = [BearerTokenAuth(tokens)] if tokens else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=GRPC_OPTIONS if config.replica is None else SHARED_PORT_GRPC_OPTIONS,
    )
    if config.metrics_listen:
        config.metrics_listen.check_free()
    port = _bind(server, config)
    http: HttpListener | None = None
    try:
        if config.http_listen:
            http = HttpListener(config.http_listen)
        store = metered(await open_writable_store(config.store), metrics)
    except BaseException:
        if http is not None:
            http.close()
        await server.stop(None)
        raise
    served = ServedTypes(store)
    hub = EventHub(store, metrics=metrics, tail_interval=config.tail_interval, served=served)
    await hub.start()
    # Every writer below gets the store that wakes the hub after its writes.
    store = waking(store, hub)

    service = JobControlService(
        store,
        hub,
        metrics,
        served=served,
        reject_unserved_types=config.reject_unserved_types,
    )
    calls = Calls(service, metrics, Admission(config.limits, metrics))
    registration.register(server, calls)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            job_control_pb2.DESCRIPTOR.services_by_name["JobControl"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    housekeeper = Housekeeper(
        store,
        health_servicer,
        metrics,
        config.housekeeping,
        primary=config.replica is None or config.replica.primary,
    )
    await housekeeper.check_health()  # health answers SERVING from the first call
    worker_stop, worker_stop_now = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        """The first signal stops the server (the in-process worker drains meanwhile);
        a second one ends that drain at once, as it does for `jobcontrol-worker`."""
        (worker_stop_now if stop.is_set() else stop).set()

    # Handled before the server says it listens: a SIGTERM right after that line (from a
    # supervisor or a test) stops it gracefully instead of killing it outright.
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    await server.start()
    if http is not None:
        http.start(http_app(calls, tokens, config.http_cors_origins), config.tls)
        log.info(
            "HTTP API on %s://%s (Connect, gRPC-Web and gRPC; HTTP/1.1 and HTTP/2)%s",
            "https" if config.tls else "http",
            http.address.with_port(http.port),
            f", CORS for {', '.join(config.http_cors_origins)}" if config.http_cors_origins else "",
        )
        log.info(
            "dashboard at %s://%s/",
            "https" if config.tls else "http",
            http.address.with_port(http.port),
        )
    if config.replica is None:
        log.info("listening on %s (%s)", config.listen.with_port(port), describe(config))
    else:  # the supervisor says "listening on" once every process serves
        log.info(
            "process %d of %d (pid %d) serving on %s",
            config.replica.index + 1,
            config.replica.count,
            os.getpid(),
            config.listen.with_port(port),
        )
    if config.metrics_listen:
        metrics.serve(str(config.metrics_listen))
        log.info(
            "metrics on http://%s/metrics%s",
            config.metrics_listen,
            ""
            if config.replica is None
            else f" (process 1 of {config.replica.count}: its own calls and streams only)",
        )
    if on_listening is not None:
        on_listening(port)
    housekeeper.start()
    lag_sampler = asyncio.create_task(metrics.sample_loop_lag(), name="loop-lag")
    worker_task = (
        _start_worker(store, config, worker_stop, worker_stop_now) if config.with_worker else None
    )
    try:
        await stop.wait()
        log.info("shutting down: ending streams, finishing calls in flight")
        if worker_task is not None:
            log.info(
                "stopping the in-process worker: drain grace %s; a second SIGTERM/SIGINT "
                "hands its running jobs back at once",
                format_duration(config.worker_drain_grace),
            )
    finally:
        if worker_task is not None:
            worker_stop.set()  # drains: running jobs finish or are handed back
            await asyncio.gather(worker_task, return_exceptions=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        lag_sampler.cancel()
        await housekeeper.stop()
        await hub.close()
        await asyncio.gather(
            server.stop(SHUTDOWN_GRACE_SECONDS), *([http.stop()] if http is not None else [])
        )
        await store.close()
        log.info("stopped")


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Bind the listen address (before the store is touched); returns the port, the one
    chosen when the address asked for port 0."""
    if config.replica is None:
        config.listen.check_free()
    address = str(config.listen)
    try:
        if config.tls:
            return server.add_secure_port(address, _credentials(config.tls))
        return server.add_insecure_port(address)
    except RuntimeError:
        hint = ": check that the TLS certificate and key are valid and match" if config.tls else ""
        raise ListenError(f"cannot listen on {address}{hint}") from None
    except OSError as error:  # a TLS file that cannot be read
        raise ListenError(f"cannot listen on {address}: {error}") from None


def _start_worker(
    store: JobStore,
    config: ServerConfig,
    stop: asyncio.Event,
    stop_now: asyncio.Event,
) -> asyncio.Task[None]:
    """The in-process worker of `--with-worker`: the same store, which wakes the hub."""
    from jobcontrol.worker.cli import load_handler_modules
    from jobcontrol.worker.handlers import default_registry
    from jobcontrol.worker.runtime import Worker, WorkerConfig

    load_handler_modules("")
    worker = Worker(
        store,
        default_registry,
        WorkerConfig(drain_grace=config.worker_drain_grace, fetch_allow=config.worker_fetch_allow),
    )
    return asyncio.create_task(worker.run(stop, stop_now), name="in-process-worker")
