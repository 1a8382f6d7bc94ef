"""How long a progress update takes to reach the watchers of a job, on SQLite and remote libSQL.

Latency is the time from a store write to its receipt by a watcher over WatchJob, with
1, 100 and 1,000 watchers per job (10,000 with --watchers, see WATCHERS), on each backend of
`bench/backends.py` (remote: the store's driver over Hrana/HTTP to a real sqld on
loopback, server and worker configured through JOB_STORE_BACKEND=turso and
TURSO_DATABASE_URL):

- worker write (tailed): a separate "worker" OS process, with its own store (open_store)
  on the server's database as a real worker has, calls report_progress PROGRESS_UPDATES
  times, SPACING apart (or back to back if a write takes longer, as remote ones do); each
  update's message is the time.time() taken just before the write. The server sees
  these writes only by tailing `job_events` while someone watches: every 50 ms on
  SQLite, every 200 ms on a remote store (the server's defaults), a quarter of that
  while a watched job runs (`hub.HOT_SPEEDUP`). A watcher subtracts
  the message from time.time() when the event arrives ("updates received"). Progress
  the watcher never received because a newer update replaced it is measured as well,
  until the update that replaced it arrived ("every update"): the delay before the
  watcher's view was at least that new. The writes go straight to the store, 20 a
  second: a real handler's `report_progress` is throttled to 4 writes a second by the
  worker runtime, so this is the heaviest progress feed a job can produce.
- HTTP polling (the design WatchJob replaces, SQLite only): the same number of clients
  (1, 100, 1,000) poll `GET /jobs/{id}` every 2 s (`http_polling.py`: an asyncio HTTP
  server reading the same store with `get_job`) while the worker writes the same
  updates to another job. "every update" is scored exactly as for watchers; "age at
  poll" is the age of the progress value each poll returned, while updates flowed; and
  "delivered" is the share of the updates a client ever saw. "x fresher" divides the
  polling figure by the WatchJob figure at the same count, measured in the same run.
- local write (wakes the tailer): CancelJob through the server on a RUNNING job; the
  server's own write wakes its tailer at once. Latency is from just before the RPC is
  sent to the CANCEL_REQUESTED event's arrival at each watcher. Each cancel is one
  sample per watcher: CANCELS[watchers] jobs are cancelled per run (1 beyond the table).

The watchers are grpc.aio streams in this process (spread over connections of 100
streams each, opened in waves of 1,000, see `streams.py`), so with many watchers the
figures include the time this one Python process takes to read them all (at 10,000 it
is the bottleneck on 2 cores); slow readers get progress coalesced (the newest replaces older
ones), and `delivered` says what share of the updates reached the average watcher.
Writer and reader share the machine's clock. Every statistic is the median over runs,
each run on a fresh server and store; percentiles pool all watchers' samples of a run.

On remote, "req/write" counts the HTTP requests sqld received (through the counting
proxy in front of it) while the writes were being delivered, per write: every client's
(the server's tail and snapshot reads as well as the writes themselves), since the
proxy cannot tell them apart.

- bare grpc.aio (the anchor, SQLite runs up to 1,000 watchers): the same updates from
  `bench.grpc_anchor`, a grpc.aio server with nothing behind it, read by the same
  client: what grpc.aio's fan-out alone takes on this machine at this load.

Run: `.venv/bin/python -m bench.progress_latency [--runs N] [--backend sqlite|remote|both]
[--no-polling] [--processes N]`; `--processes N` runs the server as `jobcontrol-server
--processes N` (the streams spread over N processes on one port).
Figures depend on the machine and its load; compare runs on the same machine only. No
figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import backends, grpc_anchor, http_polling, procs, profiling, report, rpc, streams
from bench.backends import Database
from bench.http_polling import HttpServer
from bench.report import Headline
from bench.stats import Figure, percentile
from jobcontrol.jobs import Progress
from jobcontrol.server.cli import LOCAL_TAIL_INTERVAL, REMOTE_TAIL_INTERVAL
from jobcontrol.server.hub import HOT_SPEEDUP
from jobcontrol.store import JobStore, StoreConfig, open_store
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

RESULTS_PATH = report.RESULTS / "progress_latency.json"
# Watchers per job, by backend. A remote run with 1 to 1,000 takes about 30 s.
# Watchers per job (both backends). 10,000 is opt-in (--watchers 1,100,1000,10000): one
# client process on 2 cores cannot read 10,000 streams of 20 updates/s, so its figure
# measures this process (p99 of 9 to 52 s between runs) and costs 20-60 s per run.
WATCHERS = (1, 100, 1_000)
POLLING_BACKENDS = ("sqlite",)
MAX_POLLING_CLIENTS = 1_000
TAIL_INTERVALS = {"sqlite": LOCAL_TAIL_INTERVAL, "remote": REMOTE_TAIL_INTERVAL}
PROGRESS_UPDATES = 40
SPACING = 0.050  # seconds between a worker's progress writes: 20 a second
# Local writes per run: one per job, each job with fresh watchers.
CANCELS = {1: 20, 100: 5, 1_000: 3, 10_000: 1}
LEASE_TIMEOUT = timedelta(minutes=10)  # never expires during a run
WAIT = 120.0  # seconds any one wait may take before the run is declared broken
GOAL_P99_MS = 100.0  # at 1,000 watchers
ANCHOR_MAX_WATCHERS = 1_000
CPU_ROWS = ("worker", "anchor")
GOAL_FRESHER = 10.0

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
                conn.send(("ok", await write_updates(store, job_id, lease_id, count, spacing)))
            else:
                raise ValueError(f"unknown command {command!r}")
    finally:
        await store.close()


def percent_of(index: int, count: int) -> float:
    """The percent reported by the index-th (1-based) of `count` updates."""
    return 100.0 * index / count


async def write_updates(
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


# ---- watchers ---------------------------------------------------------------------------


class Watchers:
    """`count` WatchJob streams on one job, recording each event's latency on arrival."""

    def __init__(self, stubs: Sequence[rpc.Stub], job_id: str, count: int) -> None:
        self.job_id = job_id
        self.count = count
        # Per stream, every PROGRESS event as (percent, send time, arrival time).
        self.progress: list[list[tuple[float, float, float]]] = [[] for _ in range(count)]
        self.top_percent = [0.0] * count
        self.cancel_seen: list[float | None] = [None] * count  # time.time() of arrival
        self._streams = streams.Streams(stubs, [job_id], self._on_event)

    def _on_event(self, index: int, event: pb.JobEvent, received: float) -> None:
        if event.kind == PROGRESS:
            progress = event.job.progress
            sent = float(progress.message)
            self.progress[index].append((progress.percent, sent, received))
            self.top_percent[index] = progress.percent
        elif event.kind == CANCEL_REQUESTED:
            self.cancel_seen[index] = received

    async def all_opened(self) -> None:
        await self._streams.open(self.count, wait=WAIT)

    async def all_saw_percent(self, percent: float) -> None:
        await rpc.until(
            lambda: all(top >= percent for top in self.top_percent),
            f"{self.count} watchers to see {percent}%",
            wait=WAIT,
        )

    async def all_saw_cancel(self) -> None:
        await rpc.until(
            lambda: all(seen is not None for seen in self.cancel_seen),
            f"{self.count} watchers to see CANCEL_REQUESTED",
            wait=WAIT,
        )

    async def close(self) -> None:
        await self._streams.close()


# ---- one run ----------------------------------------------------------------------------


@dataclass
class Samples:
    """One run's latencies (seconds) for one kind of write and watcher count."""

    latencies: list[float] = field(default_factory=list)
    delivered: float = 1.0  # the average watcher's share of the updates written
    requests: int = 0  # HTTP requests served while the writes were delivered (remote)
    writes: int = 0
    server_cpu: float = 0.0  # CPU seconds of the server's processes while delivering them

    @property
    def requests_per_write(self) -> float:
        return self.requests / self.writes if self.writes else 0.0


def server_cpu_seconds(pid: int) -> float:
    """CPU time so far of the server and its child processes (`--processes`)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return procs.cpu_seconds(pid) + sum(server_cpu_seconds(int(child)) for child in children)


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
    db: Database,
    server: procs.Server,
    worker: Worker,
    watchers: int,
    run: int,
    profile: bool = False,
) -> tuple[Samples, Samples, Samples]:
    """Worker-write samples (updates received; every update written) and local-write
    samples with `watchers` watchers per job; `profile`: py-spy the server while the
    worker's updates are delivered."""
    job_type = f"bench.latency.r{run}.w{watchers}"
    cancels = CANCELS.get(watchers, 1)
    async with rpc.stubs(server.address, streams.connections_for(watchers)) as stubs:
        job_ids = await rpc.submit(stubs[0], [rpc.request(job_type) for _ in range(cancels)])
        claimed = dict(await worker.ask("claim", job_type, cancels))
        if sorted(claimed) != sorted(job_ids):
            raise RuntimeError(f"the worker claimed {sorted(claimed)}, not {sorted(job_ids)}")

        received = Samples()
        every = Samples()
        local = Samples()
        for number, job_id in enumerate(job_ids):
            watching = Watchers(stubs, job_id, watchers)
            try:
                await watching.all_opened()
                if number == 0:  # the progress updates, on the first job only
                    before = db.requests_so_far()
                    cpu_before = server_cpu_seconds(server.pid)
                    with profiling.profile(
                        server.pid if profile else None,
                        f"progress-server-{db.backend}-{watchers}",
                    ):
                        sent = await worker.ask(
                            "progress", job_id, claimed[job_id], PROGRESS_UPDATES, SPACING
                        )
                        await watching.all_saw_percent(100.0)
                    received.requests = db.requests_so_far() - before
                    received.server_cpu = server_cpu_seconds(server.pid) - cpu_before
                    received.writes = PROGRESS_UPDATES
                    for arrivals in watching.progress:
                        received.latencies.extend(at - sent_at for _, sent_at, at in arrivals)
                        every.latencies.extend(covered(sent, arrivals))
                    received.delivered = len(received.latencies) / (watchers * PROGRESS_UPDATES)
                    every.delivered = received.delivered
                    every.requests, every.writes = received.requests, received.writes
                    every.server_cpu = received.server_cpu
                before = db.requests_so_far()
                sent_at = time.time()
                await stubs[0].CancelJob(api.CancelJobRequest(job_id=job_id), timeout=WAIT)
                await watching.all_saw_cancel()
                local.requests += db.requests_so_far() - before
                local.writes += 1
                local.latencies.extend(seen - sent_at for seen in watching.cancel_seen if seen)
            finally:
                await watching.close()
        return received, every, local


async def measure_anchor(watchers: int) -> Samples:
    """The same updates from a bare grpc.aio server (`grpc_anchor`) to as many watchers,
    read by the same client: what grpc.aio's fan-out alone takes here and now."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.grpc_anchor",
        str(watchers),
        str(PROGRESS_UPDATES),
        str(SPACING),
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), WAIT))
        async with rpc.stubs(f"127.0.0.1:{port}", streams.connections_for(watchers)) as stubs:
            watching = Watchers(stubs, grpc_anchor.JOB_ID, watchers)
            try:
                await watching.all_opened()
                cpu_before = procs.cpu_seconds(process.pid)
                await watching.all_saw_percent(100.0)
                samples = Samples(server_cpu=procs.cpu_seconds(process.pid) - cpu_before)
            finally:
                await watching.close()
    finally:
        process.kill()
        await process.wait()
    for arrivals in watching.progress:
        samples.latencies.extend(at - sent_at for _, sent_at, at in arrivals)
    samples.delivered = len(samples.latencies) / (watchers * PROGRESS_UPDATES)
    return samples


async def measure_polling(
    server: procs.Server, http: HttpServer, worker: Worker, clients: int, run: int
) -> tuple[Samples, Samples]:
    """HTTP polling of a job getting the same progress updates: every update's delay
    until a client's view was at least that new, and the age of what each poll saw."""
    job_type = f"bench.polling.r{run}.c{clients}"
    async with rpc.stubs(server.address) as (stub,):
        (job_id,) = await rpc.submit(stub, [rpc.request(job_type)])
    ((_, lease_id),) = await worker.ask("claim", job_type, 1)
    last_sent = [math.inf]
    started = time.time()
    pollers = asyncio.create_task(
        http_polling.poll(
            http.address, job_id, clients, started, lambda: last_sent[0] + http_polling.PERIOD
        )
    )
    try:
        sent = await worker.ask("progress", job_id, lease_id, PROGRESS_UPDATES, SPACING)
        last_sent[0] = sent[-1]
        polled = await asyncio.wait_for(pollers, WAIT)
    finally:
        pollers.cancel()
    every, age = Samples(), Samples()
    seen = 0
    for polls in polled:
        every.latencies.extend(covered(sent, polls))
        # While updates flowed: after the last one, what a poll sees only gets older.
        age.latencies += [at - sent_at for _, sent_at, at in polls if at <= sent[-1] + SPACING]
        seen += len({percent for percent, _, _ in polls})
    every.delivered = age.delivered = seen / (clients * PROGRESS_UPDATES)
    return every, age


async def one_run(
    backend: str,
    directory: Path,
    run: int,
    counts: Sequence[int],
    pollers: Sequence[int],
    profile: int | None = None,
    processes: int = 1,
) -> dict[tuple[str, int], Samples]:
    with backends.serve(backend, directory / f"{backend}-run-{run}.db") as db:
        store = await open_store(db.config)  # create and migrate the database first
        await store.close()
        log_path = directory / f"{backend}-server-{run}.log"
        server_args = ["--processes", str(processes)] if processes > 1 else []
        server = await asyncio.to_thread(procs.Server.start, log_path, db.config, args=server_args)
        http = None
        if pollers:
            http_log = directory / f"{backend}-http-{run}.log"
            http = await asyncio.to_thread(HttpServer.start, http_log, db.config)
        worker = Worker(db.config)
        try:
            await worker.ask()  # "ready": its store is open
            found: dict[tuple[str, int], Samples] = {}
            for watchers in counts:
                print(f", {watchers:,} watcher{'s' if watchers != 1 else ''}", end="", flush=True)
                try:
                    received, every, local = await measure_watchers(
                        db, server, worker, watchers, run, profile == watchers
                    )
                except RuntimeError as error:
                    if watchers <= 1_000:
                        raise
                    print(f" (failed: {error})", end="", flush=True)
                    continue
                found["worker", watchers] = received
                found["worker_every", watchers] = every
                found["local", watchers] = local
                if backend == "sqlite" and watchers <= ANCHOR_MAX_WATCHERS:
                    print(" (and the anchor)", end="", flush=True)
                    found["anchor", watchers] = await measure_anchor(watchers)
                if http is not None and watchers in pollers:
                    print(" (and polling)", end="", flush=True)
                    polled = await measure_polling(server, http, worker, watchers, run)
                    found["poll_every", watchers], found["poll_age", watchers] = polled
            return found
        finally:
            worker.close()
            if http is not None:
                await asyncio.to_thread(http.stop)
            await asyncio.to_thread(server.stop)


# ---- figures ----------------------------------------------------------------------------

STATS = ("p50", "p90", "p99", "max")
WRITES = {
    "worker": "worker write, updates received",
    "worker_every": "worker write, every update",
    "poll_every": "HTTP polling every 2 s, every update",
    "poll_age": "HTTP polling every 2 s, age at poll",
    "local": "local write (wakes the tailer)",
    "anchor": "bare grpc.aio server, same client",
}


def stats_ms(samples: Samples, remote: bool) -> dict[str, float]:
    values = samples.latencies
    stats = {
        **{s: 1000 * (max(values) if s == "max" else percentile(values, int(s[1:]) / 100))
           for s in STATS},
        "samples": len(values),
        "delivered_percent": 100 * samples.delivered,
        "server_cpu_us_per_message": 1e6 * samples.server_cpu / len(values) if values else 0.0,
    }  # fmt: skip
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

    def figure(self, key: str) -> Figure:
        return Figure([run[key] for run in self.runs])

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
            "server_cpu_us_per_message": round(self.median("server_cpu_us_per_message"), 1),
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
        "CPU us/msg",
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
            f"{m.median('server_cpu_us_per_message'):.0f}" if m.write in CPU_ROWS else "-",
            f"{m.median('http_requests_per_write'):.1f}" if m.remote else "-",
        )
        for m in metrics
        if m.runs
    ]
    title = (
        f"WatchJob progress latency, write to receipt, median of {runs} "
        f"run{'s' if runs != 1 else ''} (ms)"
    )
    backends_shown = sorted({m.backend for m in metrics}, key=backends.BACKENDS.index)
    tails = ", ".join(f"{TAIL_INTERVALS[b] * 1000:.0f} ms on {b}" for b in backends_shown)
    counts = sorted({m.watchers for m in metrics if m.runs})
    cancels = "/".join(str(CANCELS.get(w, 1)) for w in counts)
    watchers = "/".join(f"{w:,}" for w in counts)
    notes = [
        f"worker write: {PROGRESS_UPDATES} report_progress calls {SPACING * 1000:.0f} ms apart "
        "(back to back if slower) from another",
        f"  process, seen by the server's tailer (every {tails};",
        f"  {HOT_SPEEDUP} times as often while a watched job runs);",
        "  updates received: each PROGRESS event that arrived, arrival - send time;",
        "  every update: each write, until it or a newer update (which replaced it) arrived;",
        "delivered: share of the updates the average watcher (or poller) received;",
        "CPU us/msg: the server's CPU time (all its processes) while the worker's updates",
        "  were delivered, per message received;",
        f"HTTP polling: as many clients, GET /jobs/ID every {http_polling.PERIOD:.0f} s "
        "(random phase), same updates;",
        "  age at poll: arrival - send time of the progress each poll returned;",
        f"local write: CancelJob -> CANCEL_REQUESTED, {cancels} jobs per run with {watchers} "
        "watchers;",
        "bare grpc.aio server, same client (the anchor, python -m bench.grpc_anchor): the same",
        "  updates, stamped just before they are handed to the streams, with no store, tailer",
        f"  or conversion behind them (sqlite runs, up to {ANCHOR_MAX_WATCHERS:,} watchers);",
        "samples: all watchers' samples of one run, pooled.",
    ]
    if "sqlite" in backends_shown:
        notes.append(f"sqlite: a SQLite {sqlite3.sqlite_version} file (WAL), local backend.")
    if "remote" in backends_shown:
        notes += [
            backends.remote_note(),
            "  req/write: HTTP requests served from each write until every watcher had it,",
            "  per write (all clients: the server's tail and snapshot reads are included).",
        ]
    return report.table(title, header, rows, align="<><>>>>>>>>", notes=notes)


def fresher(
    metrics: dict[tuple[str, str, int], Metric], pollers: dict[str, list[int]]
) -> tuple[str, list[Headline]]:
    """Polling against WatchJob at each client count (both "every update"), per run."""
    rows = []
    headlines = []
    for (backend, write, count), polled in metrics.items():
        if write != "poll_every" or not polled.runs:
            continue
        watched = metrics[backend, "worker_every", count]
        by_run = list(zip(watched.runs, polled.runs, strict=True))
        ratio = {s: Figure([p[s] / w[s] for w, p in by_run]) for s in ("p50", "p99")}
        rows.append(
            (
                f"{count:,}",
                backend,
                f"{watched.median('p50'):,.0f} / {watched.median('p99'):,.0f}",
                f"{polled.median('p50'):,.0f} / {polled.median('p99'):,.0f}",
                ratio["p50"].cell(1),
                ratio["p99"].cell(1),
                f"{100 - watched.median('delivered_percent'):.0f}%",
                f"{100 - polled.median('delivered_percent'):.0f}%",
            )
        )
        if count == max(pollers[backend]):
            headlines.append(
                Headline.of(
                    "progress latency",
                    f"WatchJob fresher than 2 s polling (p50, {count:,} clients)",
                    backend,
                    ratio["p50"],
                    "x",
                    digits=1,
                    goal=f">= {GOAL_FRESHER:g}x",
                    met=ratio["p50"].median >= GOAL_FRESHER,
                )
            )
    table = report.table(
        "WatchJob against HTTP polling, every update: write until the client's view was "
        "at least that new",
        (
            "clients",
            "backend",
            "WatchJob p50/p99 ms",
            "polling p50/p99 ms",
            "x fresher p50",
            "x fresher p99",
            "WatchJob never seen",
            "polling never seen",
        ),
        rows,
        align="><>>>>>>",
        notes=["x fresher: polling / WatchJob in the same run, median over runs (min-max)."],
    )
    return table, headlines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.progress_latency", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    backends.add_argument(parser)
    parser.add_argument("--no-polling", action="store_true", help="skip the HTTP polling baseline")
    parser.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="WATCHERS",
        help="py-spy the server while updates reach this many watchers, last run "
        "(bench/results/profiles)",
    )
    parser.add_argument(
        "--watchers",
        type=lambda text: sorted({int(n) for n in text.split(",")}),
        default=list(WATCHERS),
        help=f"watchers per job, on every backend (default {','.join(map(str, WATCHERS))}); "
        f"HTTP polling runs at the counts up to {MAX_POLLING_CLIENTS:,}",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes on one port (jobcontrol-server --processes; default 1)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    chosen = backends.chosen(args.backend)
    counts = args.watchers
    pollers = {
        backend: []
        if args.no_polling or backend not in POLLING_BACKENDS
        else [c for c in counts if c <= MAX_POLLING_CLIENTS]
        for backend in chosen
    }

    # Table order: each write and watcher count, then the backends side by side.
    metrics = {
        (backend, write, watchers): Metric(backend, write, watchers)
        for write in WRITES
        for watchers in counts
        for backend in chosen
    }
    began = time.perf_counter()
    run_seconds: dict[str, list[float]] = {backend: [] for backend in chosen}
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        for backend in chosen:
            for run in range(1, args.runs + 1):
                print(f"{backend} run {run}/{args.runs}", end="", flush=True)
                started = time.perf_counter()
                profile = args.profile if run == args.runs else None
                found = rpc.run(
                    one_run(
                        backend, Path(tmp), run, counts, pollers[backend], profile, args.processes
                    )
                )
                run_seconds[backend].append(time.perf_counter() - started)
                print(f" ({run_seconds[backend][-1]:.0f} s)", flush=True)
                for (write, watchers), samples in found.items():
                    stats = stats_ms(samples, remote=backend == "remote")
                    metrics[backend, write, watchers].runs.append(stats)
    elapsed = time.perf_counter() - began
    print(render(list(metrics.values()), args.runs))
    comparison, headlines = fresher(metrics, pollers)
    if any(pollers.values()):
        print(comparison)
    for backend in chosen:
        at = metrics.get((backend, "worker", 1_000))
        if at is not None and at.runs:
            headlines.insert(
                0,
                Headline.of(
                    "progress latency",
                    "WatchJob p99, worker write to receipt, 1,000 watchers",
                    backend,
                    at.figure("p99"),
                    "ms",
                    goal=f"<= {GOAL_P99_MS:.0f} ms",
                    met=at.median("p99") <= GOAL_P99_MS,
                ),
            )
        anchor = metrics.get((backend, "anchor", 1_000))
        if anchor is not None and anchor.runs:
            headlines.insert(
                1,
                Headline.of(
                    "progress latency",
                    "bare grpc.aio fan-out p99, same client, 1,000 watchers (anchor)",
                    backend,
                    anchor.figure("p99"),
                    "ms",
                ),
            )
        top = max(counts)
        at_top = metrics.get((backend, "worker", top))
        if top > 1_000 and at_top is not None and at_top.runs:
            headlines.append(
                Headline.of(
                    "progress latency",
                    f"WatchJob p99 at {top:,} watchers (one client process)",
                    backend,
                    at_top.figure("p99"),
                    "ms",
                )
            )

    document = {
        "runs": args.runs,
        "backends": list(chosen),
        "elapsed_seconds": round(elapsed, 1),
        "run_seconds": {b: [round(s, 1) for s in seconds] for b, seconds in run_seconds.items()},
        "workload": {
            "progress_updates": PROGRESS_UPDATES,
            "spacing_ms": SPACING * 1000,
            "watchers": counts,
            "server_processes": args.processes,
            "polling_clients": pollers,
            "polling_period_s": http_polling.PERIOD,
            "tail_interval_ms": {backend: TAIL_INTERVALS[backend] * 1000 for backend in chosen},
            "cancels_per_run": {str(k): v for k, v in CANCELS.items()},
            "streams_per_connection": streams.STREAMS_PER_CONNECTION,
        },
        "metrics": [m.to_json() for m in metrics.values() if m.runs],
    }
    path = report.save("progress_latency", document, headlines, args.output)
    print(f"{elapsed:.0f} s in all; figures written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
