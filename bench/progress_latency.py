"""How long a progress update takes to reach the watchers of a job, on SQLite and remote libSQL.

Latency is the time from a store write to its receipt by a watcher over WatchJob, with
1, 100 and 1,000 watchers per job, on each backend of `bench/backends.py` (remote: the
libSQL driver over Hrana/HTTP to the test server on loopback, server and worker
configured through JOB_STORE_BACKEND=turso and TURSO_DATABASE_URL/TURSO_AUTH_TOKEN):

- worker write (tailed): a separate "worker" OS process, with its own store (open_store)
  on the server's database as a real worker has, calls report_progress PROGRESS_UPDATES
  times, SPACING apart (or back to back if a write takes longer, as remote ones do); each
  update's message is the time.time() taken just before the write. The server sees
  these writes only by tailing `job_events` while someone watches: every 50 ms on
  SQLite, every 200 ms on a remote store (the server's defaults). A watcher subtracts
  the message from time.time() when the event arrives ("updates received"). Progress
  the watcher never received because a newer update replaced it is measured as well,
  until the update that replaced it arrived ("every update"): the delay before the
  watcher's view was at least that new.
- local write (wakes the tailer): CancelJob through the server on a RUNNING job; the
  server's own write wakes its tailer at once. Latency is from just before the RPC is
  sent to the CANCEL_REQUESTED event's arrival at each watcher. Each cancel is one
  sample per watcher: CANCELS[watchers] jobs are cancelled per run.

The watchers are grpc.aio streams in this process (spread over several connections),
so with 1,000 watchers the figures include the time this one Python process takes to
read 1,000 streams; slow readers get progress coalesced (the newest replaces older
ones), and `delivered` says what share of the updates reached the average watcher.
Writer and reader share the machine's clock. Every statistic is the median over runs,
each run on a fresh server and store; percentiles pool all watchers' samples of a run.

On remote, "req/write" counts the HTTP requests the Hrana server received while the
writes were being delivered, per write: every client's (the server's tail and snapshot
reads as well as the writes themselves), since the server's log cannot tell them apart.

Run: `.venv/bin/python -m bench.progress_latency [--runs N] [--backend sqlite|remote|both]`.
Figures depend on the machine and its load; compare runs on the same machine only. No
figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench import backends
from bench.backends import Database
from jobcontrol.jobs import Progress
from jobcontrol.server.cli import LOCAL_TAIL_INTERVAL, REMOTE_TAIL_INTERVAL
from jobcontrol.store import JobStore, StoreConfig, open_store
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb

RESULTS_PATH = Path(__file__).parent / "results" / "progress_latency.json"
SERVER = Path(sys.executable).parent / "jobcontrol-server"
# Watchers per job, by backend: the same on both, so every remote row has a SQLite row
# beside it. A remote run with all three took about 30 s, within a ~60 s budget.
WATCHER_COUNTS = {"sqlite": (1, 100, 1_000), "remote": (1, 100, 1_000)}
TAIL_INTERVALS = {"sqlite": LOCAL_TAIL_INTERVAL, "remote": REMOTE_TAIL_INTERVAL}
PROGRESS_UPDATES = 200
SPACING = 0.020  # seconds between a worker's progress writes
# Local writes per run: one per job, each job with fresh watchers.
CANCELS = {1: 20, 100: 5, 1_000: 3}
CHANNELS = 10  # connections the watchers are spread over
LEASE_TIMEOUT = timedelta(minutes=10)  # never expires during a run
WAIT = 60.0  # seconds any one wait may take before the run is declared broken
POLL = 0.01
_LISTENING = re.compile(r"listening on (\S+):(\d+)")

SNAPSHOT = pb.EVENT_KIND_SNAPSHOT
PROGRESS = pb.EVENT_KIND_PROGRESS
CANCEL_REQUESTED = pb.EVENT_KIND_CANCEL_REQUESTED

# ---- the worker process -----------------------------------------------------------------


def worker_main(config: StoreConfig, conn: Connection) -> None:
    """Process target (module level, so spawn can import it): obey the parent's commands,
    writing only to the store, and answer each with ("ok", value) or ("error", text)."""
    try:
        asyncio.run(_serve_commands(config, conn))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _serve_commands(config: StoreConfig, conn: Connection) -> None:
    store = await open_store(config)
    try:
        conn.send(("ok", "ready"))
        while True:
            command, *args = await asyncio.to_thread(conn.recv)
            if command == "stop":
                return
            if command == "claim":
                job_type, limit = args
                jobs = await store.claim_jobs(
                    worker_id=f"bench-worker-{os.getpid()}",
                    types=[job_type],
                    limit=limit,
                    lease_timeout=LEASE_TIMEOUT,
                )
                conn.send(("ok", [(job.id, job.lease_id) for job in jobs]))
            elif command == "progress":
                job_id, lease_id, count, spacing = args
                conn.send(("ok", await _report(store, job_id, lease_id, count, spacing)))
            else:
                raise ValueError(f"unknown command {command!r}")
    finally:
        await store.close()


def percent_of(index: int, count: int) -> float:
    """The percent reported by the index-th (1-based) of `count` updates."""
    return 100.0 * index / count


async def _report(
    store: JobStore, job_id: str, lease_id: str, count: int, spacing: float
) -> list[float]:
    """`count` progress writes on a fixed schedule, each stamped with its send time;
    returns the send times."""
    started = time.monotonic()
    sent = []
    for index in range(1, count + 1):
        delay = started + index * spacing - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the writes, as a handler's work would
        sent.append(time.time())
        progress = Progress(
            percent=percent_of(index, count), stage="bench", message=f"{sent[-1]:.6f}"
        )
        await store.report_progress(job_id=job_id, lease_id=lease_id, progress=progress)
    return sent


class Worker:
    """The parent's handle on the worker process."""

    def __init__(self, config: StoreConfig) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(target=worker_main, args=(config, child_conn), daemon=True)
        self._process.start()
        child_conn.close()

    async def ask(self, *command: Any) -> Any:
        if command:
            self._conn.send(command)
        ready = await asyncio.to_thread(self._conn.poll, WAIT)
        if not ready:
            raise RuntimeError(f"the worker did not answer {command[:1]} within {WAIT} s")
        kind, value = self._conn.recv()
        if kind != "ok":
            raise RuntimeError(f"the worker failed:\n{value}")
        return value

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # it already ended and closed its end
                self._conn.send(("stop",))
            self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._conn.close()


# ---- the server process -----------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str

    @classmethod
    def start(cls, log_path: Path, config: StoreConfig) -> Server:
        """The server on `config`'s store, which it reads from the environment as a
        deployment passes it (and so picks its default tail interval for it)."""
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(SERVER), "--listen", "127.0.0.1:0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **backends.store_env(config)},
            )
        deadline = time.monotonic() + WAIT
        while True:
            text = log_path.read_text(errors="replace")
            found = _LISTENING.search(text)
            if found:
                return cls(process, f"{found.group(1)}:{found.group(2)}")
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"the server did not start:\n{text}")
            time.sleep(POLL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


# ---- watchers ---------------------------------------------------------------------------


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {WAIT} s waiting for {what}")
        await asyncio.sleep(POLL)


class Watchers:
    """`count` WatchJob streams on one job, recording each event's latency on arrival."""

    def __init__(
        self, stubs: Sequence[job_control_pb2_grpc.JobControlStub], job_id: str, count: int
    ):
        self.job_id = job_id
        self.opened = [False] * count
        # Per stream, every PROGRESS event as (percent, send time, arrival time).
        self.progress: list[list[tuple[float, float, float]]] = [[] for _ in range(count)]
        self.top_percent = [0.0] * count
        self.cancel_seen: list[float | None] = [None] * count  # time.time() of arrival
        self._tasks = [
            asyncio.create_task(self._watch(stubs[index % len(stubs)], index))
            for index in range(count)
        ]

    async def _watch(self, stub: job_control_pb2_grpc.JobControlStub, index: int) -> None:
        call = stub.WatchJob(api.WatchJobRequest(job_id=self.job_id))
        try:
            async for response in call:
                received = time.time()
                event = response.event
                if event.kind == SNAPSHOT:
                    self.opened[index] = True
                elif event.kind == PROGRESS:
                    progress = event.job.progress
                    sent = float(progress.message)
                    self.progress[index].append((progress.percent, sent, received))
                    self.top_percent[index] = event.job.progress.percent
                elif event.kind == CANCEL_REQUESTED:
                    self.cancel_seen[index] = received
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def all_opened(self) -> None:
        await until(lambda: all(self.opened), f"{len(self.opened)} streams to open")

    async def all_saw_percent(self, percent: float) -> None:
        await until(
            lambda: all(top >= percent for top in self.top_percent),
            f"{len(self.opened)} watchers to see {percent}%",
        )

    async def all_saw_cancel(self) -> None:
        await until(
            lambda: all(seen is not None for seen in self.cancel_seen),
            f"{len(self.opened)} watchers to see CANCEL_REQUESTED",
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


# ---- one run ----------------------------------------------------------------------------


@dataclass
class Samples:
    """One run's latencies (seconds) for one kind of write and watcher count."""

    latencies: list[float] = field(default_factory=list)
    delivered: float = 1.0  # the average watcher's share of the updates written
    requests: int = 0  # HTTP requests served while the writes were delivered (remote)
    writes: int = 0

    @property
    def requests_per_write(self) -> float:
        return self.requests / self.writes if self.writes else 0.0


def covered(sent: Sequence[float], arrivals: Sequence[tuple[float, float, float]]) -> list[float]:
    """For every update written (send times in order), the time until the watcher had it
    or a newer one: a coalesced update counts as seen when the update that replaced it
    arrives."""
    latencies = []
    position = 0
    for index, sent_at in enumerate(sent, start=1):
        percent = percent_of(index, len(sent))
        while arrivals[position][0] < percent:
            position += 1
        latencies.append(arrivals[position][2] - sent_at)
    return latencies


async def measure_watchers(
    db: Database, server: Server, worker: Worker, watchers: int, run: int
) -> tuple[Samples, Samples, Samples]:
    """Worker-write samples (updates received; every update written) and local-write
    samples with `watchers` watchers per job."""
    job_type = f"bench.latency.r{run}.w{watchers}"
    cancels = CANCELS[watchers]
    channels = [
        grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(min(CHANNELS, watchers))
    ]
    try:
        stubs = [job_control_pb2_grpc.JobControlStub(channel) for channel in channels]
        submitted = await stubs[0].SubmitJobs(
            api.SubmitJobsRequest(
                requests=[api.SubmitJobRequest(type=job_type) for _ in range(cancels)]
            ),
            timeout=WAIT,
        )
        claimed = dict(await worker.ask("claim", job_type, cancels))
        job_ids = [job.id for job in submitted.jobs]
        if sorted(claimed) != sorted(job_ids):
            raise RuntimeError(f"the worker claimed {sorted(claimed)}, not {sorted(job_ids)}")

        received = Samples()
        every = Samples()
        local = Samples()
        for number, job_id in enumerate(job_ids):
            streams = Watchers(stubs, job_id, watchers)
            try:
                await streams.all_opened()
                if number == 0:  # the progress updates, on the first job only
                    before = db.requests_so_far()
                    sent = await worker.ask(
                        "progress", job_id, claimed[job_id], PROGRESS_UPDATES, SPACING
                    )
                    await streams.all_saw_percent(100.0)
                    received.requests = db.requests_so_far() - before
                    received.writes = PROGRESS_UPDATES
                    for arrivals in streams.progress:
                        received.latencies.extend(at - sent_at for _, sent_at, at in arrivals)
                        every.latencies.extend(covered(sent, arrivals))
                    received.delivered = len(received.latencies) / (watchers * PROGRESS_UPDATES)
                    every.delivered = received.delivered
                    every.requests, every.writes = received.requests, received.writes
                before = db.requests_so_far()
                sent = time.time()
                await stubs[0].CancelJob(api.CancelJobRequest(job_id=job_id), timeout=WAIT)
                await streams.all_saw_cancel()
                local.requests += db.requests_so_far() - before
                local.writes += 1
                local.latencies.extend(seen - sent for seen in streams.cancel_seen if seen)
            finally:
                await streams.close()
        return received, every, local
    finally:
        for channel in channels:
            await channel.close()


async def one_run(backend: str, directory: Path, run: int) -> dict[tuple[str, int], Samples]:
    with backends.serve(backend, directory / f"{backend}-run-{run}.db") as db:
        store = await open_store(db.config)  # create and migrate the database first
        await store.close()
        log_path = directory / f"{backend}-server-{run}.log"
        server = await asyncio.to_thread(Server.start, log_path, db.config)
        worker = Worker(db.config)
        try:
            await worker.ask()  # "ready": its store is open
            found: dict[tuple[str, int], Samples] = {}
            for watchers in WATCHER_COUNTS[backend]:
                print(f", {watchers} watcher{'s' if watchers != 1 else ''}", end="", flush=True)
                received, every, local = await measure_watchers(db, server, worker, watchers, run)
                found["worker", watchers] = received
                found["worker_every", watchers] = every
                found["local", watchers] = local
            return found
        finally:
            worker.close()
            await asyncio.to_thread(server.stop)


# ---- figures ----------------------------------------------------------------------------

STATS = ("p50", "p90", "p99", "max")
WRITES = {
    "worker": "worker write, updates received",
    "worker_every": "worker write, every update",
    "local": "local write (wakes the tailer)",
}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def stats_ms(samples: Samples, remote: bool) -> dict[str, float]:
    values = samples.latencies
    stats = {
        "p50": 1000 * percentile(values, 0.50),
        "p90": 1000 * percentile(values, 0.90),
        "p99": 1000 * percentile(values, 0.99),
        "max": 1000 * max(values),
        "samples": len(values),
        "delivered_percent": 100 * samples.delivered,
    }
    if remote:
        stats["http_requests_per_write"] = samples.requests_per_write
    return stats


@dataclass
class Metric:
    backend: str
    write: str
    watchers: int
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs)

    @property
    def remote(self) -> bool:
        return self.backend == "remote"

    def to_json(self) -> dict[str, Any]:
        requests = ("http_requests_per_write",) if self.remote else ()
        return {
            "backend": self.backend,
            "write": self.write,
            "description": WRITES[self.write],
            "watchers": self.watchers,
            "unit": "ms",
            **{key: round(self.median(key), 2) for key in (*STATS, "samples", *requests)},
            "delivered_percent": round(self.median("delivered_percent"), 1),
            "runs": [{k: round(v, 2) for k, v in run.items()} for run in self.runs],
        }


def render(metrics: Sequence[Metric], runs: int) -> str:
    header = (
        "write",
        "watchers",
        "backend",
        "samples",
        "delivered",
        *(f"{s} ms" for s in STATS),
        "req/write",
    )
    rows = [
        (
            WRITES[m.write],
            f"{m.watchers:,}",
            m.backend,
            f"{m.median('samples'):,.0f}",
            f"{m.median('delivered_percent'):.0f}%",
            *(f"{m.median(s):,.1f}" for s in STATS),
            f"{m.median('http_requests_per_write'):.1f}" if m.remote else "-",
        )
        for m in metrics
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ["<", ">", "<", *(">" * (len(header) - 3))]

    def line(cells: Sequence[str]) -> str:
        padded = [f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)]
        return "  ".join(padded).rstrip()

    title = (
        f"WatchJob progress latency, write to receipt, median of {runs} "
        f"run{'s' if runs != 1 else ''} (ms)"
    )
    rule = "-" * len(line(header))
    backends_shown = sorted({m.backend for m in metrics}, key=backends.BACKENDS.index)
    tails = ", ".join(f"{TAIL_INTERVALS[b] * 1000:.0f} ms on {b}" for b in backends_shown)
    counts = sorted({m.watchers for m in metrics})
    cancels = "/".join(str(CANCELS[w]) for w in counts)
    watchers = "/".join(f"{w:,}" for w in counts)
    notes = [
        f"worker write: {PROGRESS_UPDATES} report_progress calls {SPACING * 1000:.0f} ms apart "
        "(back to back if slower) from another",
        f"  process, seen by the server's tailer (every {tails});",
        "  updates received: each PROGRESS event that arrived, arrival - send time;",
        "  every update: each write, until it or a newer update (which replaced it) arrived;",
        "delivered: share of the updates the average watcher received (the rest coalesced);",
        f"local write: CancelJob -> CANCEL_REQUESTED, {cancels} jobs per run with {watchers} "
        "watchers;",
        "samples: all watchers' samples of one run, pooled.",
    ]
    if "sqlite" in backends_shown:
        notes.append(f"sqlite: a SQLite {sqlite3.sqlite_version} file (WAL), local backend.")
    if "remote" in backends_shown:
        notes += [
            f"remote: libsql {importlib.metadata.version('libsql')} (turso backend) over "
            "Hrana/HTTP to tests/hrana_server.py on loopback;",
            "  req/write: HTTP requests served from each write until every watcher had it,",
            "  per write (all clients: the server's tail and snapshot reads are included).",
        ]
    return "\n".join([title, rule, line(header), rule, *map(line, rows), rule, *notes])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.progress_latency", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    backends.add_argument(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    chosen = backends.chosen(args.backend)

    # Table order: each write and watcher count, then the backends side by side.
    counts = sorted({w for backend in chosen for w in WATCHER_COUNTS[backend]})
    metrics = {
        (backend, write, watchers): Metric(backend, write, watchers)
        for write in WRITES
        for watchers in counts
        for backend in chosen
        if watchers in WATCHER_COUNTS[backend]
    }
    began = time.perf_counter()
    run_seconds: dict[str, list[float]] = {backend: [] for backend in chosen}
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        for backend in chosen:
            for run in range(1, args.runs + 1):
                print(f"{backend} run {run}/{args.runs}", end="", flush=True)
                started = time.perf_counter()
                found = asyncio.run(one_run(backend, Path(tmp), run))
                run_seconds[backend].append(time.perf_counter() - started)
                print(f" ({run_seconds[backend][-1]:.0f} s)", flush=True)
                for (write, watchers), samples in found.items():
                    stats = stats_ms(samples, remote=backend == "remote")
                    metrics[backend, write, watchers].runs.append(stats)
    elapsed = time.perf_counter() - began
    print(render(list(metrics.values()), args.runs))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "progress_latency",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "backends": list(chosen),
        "elapsed_seconds": round(elapsed, 1),
        "run_seconds": {b: [round(s, 1) for s in seconds] for b, seconds in run_seconds.items()},
        "machine": {
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "sqlite": sqlite3.sqlite_version,
            "libsql": importlib.metadata.version("libsql"),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "workload": {
            "progress_updates": PROGRESS_UPDATES,
            "spacing_ms": SPACING * 1000,
            "watchers": {backend: list(WATCHER_COUNTS[backend]) for backend in chosen},
            "tail_interval_ms": {backend: TAIL_INTERVALS[backend] * 1000 for backend in chosen},
            "cancels_per_run": {str(k): v for k, v in CANCELS.items()},
            "channels": CHANNELS,
        },
        "metrics": [m.to_json() for m in metrics.values()],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"{elapsed:.0f} s in all; figures written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
