"""The multi-machine shape on one machine: one real sqld, a proxy in front of it adding
0 ms and then 20 ms of round trip, two `jobcontrol-server`s and two `jobcontrol-worker`s,
all on the proxy's URL (JOB_STORE_BACKEND=turso) and sharing nothing else.

`--stores` runs the same shape on other stores too, side by side in one invocation:
`sqlite` (JOB_STORE_BACKEND=local: the four processes on one SQLite file, so one
machine only, no added RTT), `sqld` (the above) and `postgres` (JOB_STORE_BACKEND=postgres,
DATABASE_URL: a fresh database per run in a throwaway PostgreSQL 15 cluster started once
per invocation, `tests.postgres.PostgresCluster`; at 0 ms the processes connect to it
directly, at any other RTT through the same TCP delay proxy, which counts no requests
there since PostgreSQL's protocol is not HTTP), and `postgres-poll`, the same with
JOB_STORE_POLL_ONLY=1 (no LISTEN: what the pushed wake-ups are worth). Within a run the
stores take turns.

Each run starts, for each store and added round trip (RTT) in turn, with the disk
flushed (`os.sync`: the pages a store's run left dirty would otherwise be written back
in the middle of the next store's run, where PostgreSQL flushes its WAL at every
commit), a fresh database (for sqld: a fresh sqld and proxy, `backends.serve`, the
proxy counting every HTTP request), then:

- calibration, before any server or worker starts: this process's own store through
  the same proxy calls each store operation a few times alone: HTTP requests per call
  (the proxy's count) and time per call. The calibration jobs still pending then
  (some 10,000, of a type no worker serves) are claimed and completed, unmeasured, so
  no claim in the phases walks past them.
- the cluster: servers A and B (`--metrics-listen`) and two workers
  (`bench.counted_worker`: `jobcontrol-worker` with its store calls counted on /metrics,
  `--concurrency` slots each, default poll intervals, handlers `bench.cancel_handlers`
  and `bench.cluster_handlers`), all ready before anything is measured.
- idle: IDLE seconds with nothing to do (the background: idle polls, reaper, tails).
- claim latency: CLAIM_SAMPLES `demo.sleep` {"seconds": 0, "steps": 0} submitted one at a
  time through server A, 100-250 ms apart at random; latency is the job's start_time
  (the claiming worker's clock) minus its create_time (server A's clock).
- progress latency: PROGRESS_JOBS `bench.progress_probe` jobs (PROGRESS_UPDATES
  `report_progress` calls each, PROGRESS_SPACING apart, stamped with time.time() just
  before the call, which the worker writes at once) submitted through server A and
  watched with WatchJob on both servers; latency is arrival minus stamp. Neither
  server wrote the progress, so both see it by tailing the store (every 200 ms remote).
  The goal is held against the watcher on server B, the other server.
- cancel latency: CANCEL_JOBS `bench.cancel_probe` jobs (`cancel_handlers.py`) submitted
  through server A and watched there; once all run, each is cancelled through server B
  at a random moment within a second. Measured: the handler seeing the stop (the time
  it writes to a file), CANCELLED recorded (end_time), and CANCELLED at the watcher on A.
- throughput: JOBS no-op `demo.sleep` jobs in SubmitJobs batches of 1,000, the batches
  alternating between server A and B (one client task per server, both at once),
  drained by the two workers; the clock runs from just before the first submit to the
  last job's end_time.

Every phase is bracketed by snapshots of the proxy's request count, every process's
store calls by operation, both servers' `jobcontrol_event_loop_lag_seconds` histogram
(how late each server's event loop ran a 20 ms timer) and every process's CPU time, so
each phase has its own requests, calls, loop lag and CPU. Loop-lag percentiles are
bucket upper bounds (0.5, 1, 2, 5, 10, 25, 50, 100, 250 ms, 1 s, 5 s) over both servers'
samples pooled. A control process (`loop_canary.py`: a bare asyncio loop sleeping 20 ms
at a time) records its own lateness meanwhile, exactly: what the machine alone (CPU
contention, scheduling) costs an event loop. The benchmark's own reads (is every job
claimed, finished?) go straight to sqld, not through the proxy, and are not counted; on
PostgreSQL they go through one connection kept for the run (`backends.Database.reader`).

Figures are medians over runs (min-max); percentiles pool one run's samples. Nothing
is asserted: the table shows each figure beside its goal.

Goals on PostgreSQL (issue #17), at 0 ms added RTT: progress p99 to the watcher on
server B <= 50 ms, claim p50 <= 10 ms (a pushed wake-up, not a poll), throughput at least
the SQLite store's in the same invocation.

Run: `.venv/bin/python -m bench.cluster [--runs N] [--stores sqlite,sqld,postgres]
[--concurrency C] [--jobs N] [--batch N] [--rtts 0,20] [--dashboards] [--sweep 16,64,128]
[--profile]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import math
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench import (
    backends,
    cancel_latency,
    loop_canary,
    procs,
    profiling,
    report,
    rpc,
    streams,
    throughput,
)
from bench.report import Headline
from bench.stats import Figure, Figures, percentile, percentiles_ms
from jobcontrol.jobs import JobSpec, Progress
from jobcontrol.server.cli import REMOTE_TAIL_INTERVAL
from jobcontrol.store import Completion, JobStore, open_store
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

T = TypeVar("T")

RTTS_MS = (0, 20)
JOBS = 20_000
CONCURRENCY = 64  # slots per worker
BATCH = 1_000  # jobs per SubmitJobs call (its limit)
IDLE = 2.0
CLAIM_SAMPLES = 20
PROGRESS_JOBS = 10
PROGRESS_UPDATES = 15
PROGRESS_SPACING = 0.3  # above the runtime's throttle of 4 writes a second
PROGRESS_AFTER = 1.0  # seconds a probe waits before its first update (watchers open)
CANCEL_JOBS = 8
CALIBRATION_CALLS = 5
WAIT = 120.0
HANDLERS = ("bench.cancel_handlers", "bench.cluster_handlers")
PHASES = ("idle", "claim", "progress", "cancel", "throughput")
SERVERS = ("A", "B")

STORES = ("sqlite", "sqld", "postgres", "postgres-poll")
# backends.serve's backend for each; postgres-poll is postgres with JOB_STORE_POLL_ONLY=1
# (no LISTEN: what the pushed wake-ups are worth).
BACKEND = {
    "sqlite": "sqlite",
    "sqld": "remote",
    "postgres": "postgres",
    "postgres-poll": "postgres",
}
GOAL_RATE = {0: 1_500.0, 20: 300.0}  # jobs/s on sqld, by RTT in ms
GOAL_LAG_P99_MS = {20: 5.0}  # on sqld
GOAL_PG_PROGRESS_P99_MS = 50.0  # at 0 ms added RTT
GOAL_PG_CLAIM_P50_MS = 10.0  # at 0 ms added RTT
LATE = 0.005  # seconds: a bucket bound of the loop-lag histogram, the goal's p99
# The store calls whose time the throughput table shows: a worker's cycle, and a submit.
CALLS_TIMED = ("claim_jobs", "complete_jobs", "create_jobs")
STORE_CALL_SECONDS = "jobcontrol_store_call_duration_seconds"
LOOP_LAG = "jobcontrol_event_loop_lag_seconds"
TAIL_MS = REMOTE_TAIL_INTERVAL * 1000


def goal_progress_ms(rtt_ms: int) -> float:
    """On sqld: the server's tail interval plus two round trips."""
    return TAIL_MS + 2 * rtt_ms


@dataclass(frozen=True)
class Shape:
    """One store at one added round trip: what a run measures, in turn."""

    store: str  # sqlite | sqld | postgres
    rtt_ms: int

    @property
    def key(self) -> str:
        """Its figures' prefix."""
        return f"{self.store}.{self.rtt_ms}ms"

    @property
    def label(self) -> str:
        return "sqlite (file)" if self.store == "sqlite" else f"{self.store} +{self.rtt_ms} ms"


def shapes_of(stores: Sequence[str], rtts: Sequence[int]) -> list[Shape]:
    """Each store at each RTT, but SQLite (a local file) at none."""
    return [Shape(store, rtt) for store in stores for rtt in ((0,) if store == "sqlite" else rtts)]


# ---- what the processes say about themselves --------------------------------------------


def _add_buckets(total: dict[float, float], buckets: dict[float, float]) -> None:
    for le, n in buckets.items():
        total[le] = total.get(le, 0.0) + n


def histogram_stats_ms(buckets: dict[float, float]) -> dict[str, float]:
    """p50, p99 and max of a (diffed, cumulative) histogram, as bucket upper bounds in
    ms (inf: above the last bound), the number of samples, and the share of them (%)
    later than LATE (p99 <= LATE exactly when that share is at most 1%)."""
    total = max(buckets.values(), default=0.0)
    on_time = buckets.get(LATE, 0.0)
    found: dict[str, float] = {
        "samples": total,
        "late_percent": 100 * (1 - on_time / total) if total else float("nan"),
    }
    for key, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        bound = next((le for le, n in buckets.items() if total and n >= fraction * total), None)
        found[key] = float("nan") if bound is None else bound * 1000
    return found


@dataclass
class Snapshot:
    """The cluster's counters at one moment."""

    at: float  # time.monotonic()
    requests: int
    calls: dict[str, float]  # store calls by operation, summed over servers and workers
    lag: dict[float, float]  # both servers' loop-lag buckets, summed
    cpu: dict[str, float]  # CPU seconds by process
    # store call durations by operation, summed over servers and workers: buckets
    call_time: dict[str, dict[float, float]] = field(default_factory=dict)

    def since(self, before: Snapshot) -> Delta:
        def diff(now: dict[float, float], then: dict[float, float]) -> dict[float, float]:
            return {le: n - then.get(le, 0.0) for le, n in now.items()}

        return Delta(
            start=before.at,
            end=self.at,
            requests=self.requests - before.requests,
            calls={op: n - before.calls.get(op, 0.0) for op, n in self.calls.items()},
            lag=diff(self.lag, before.lag),
            cpu={name: s - before.cpu.get(name, 0.0) for name, s in self.cpu.items()},
            call_time={
                op: diff(buckets, before.call_time.get(op, {}))
                for op, buckets in self.call_time.items()
            },
        )


@dataclass
class Delta:
    """What the cluster did during one phase."""

    start: float  # time.monotonic()
    end: float
    requests: int
    calls: dict[str, float]
    lag: dict[float, float]
    cpu: dict[str, float]
    call_time: dict[str, dict[float, float]] = field(default_factory=dict)
    canary: list[float] = field(default_factory=list)  # the control loop's lags, s

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def cpu_percent(self) -> dict[str, float]:
        return {name: 100 * s / self.seconds for name, s in self.cpu.items()}


@dataclass
class Cluster:
    db: backends.Database
    store: str
    servers: list[procs.Server]
    workers: list[procs.Worker]
    seen_dir: Path
    canary_path: Path
    pids: dict[str, int] = field(default_factory=dict)
    deltas: dict[str, Delta] = field(default_factory=dict)  # by phase

    def snapshot(self) -> Snapshot:
        requests = self.db.requests_so_far()
        calls: dict[str, float] = {}
        call_time: dict[str, dict[float, float]] = {}
        lag: dict[float, float] = {}
        for process in (*self.servers, *self.workers):
            text = process.metrics_text()  # one scrape for every figure of the process
            for op, n in procs.store_calls_in(text).items():
                calls[op] = calls.get(op, 0.0) + n
            timed = procs.histogram_buckets(text, STORE_CALL_SECONDS, "operation")
            for op, buckets in timed.items():
                _add_buckets(call_time.setdefault(op, {}), buckets)
            if process in self.servers:
                _add_buckets(lag, procs.histogram_buckets(text, LOOP_LAG).get("", {}))
        cpu = {MACHINE: machine_busy_seconds()}
        for name, pid in self.pids.items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                tree = name == "postgres"
                cpu[name] = cpu_seconds_with_children(pid) if tree else procs.cpu_seconds(pid)
        return Snapshot(time.monotonic(), requests, calls, lag, cpu, call_time)

    async def measure(self, phase: str, body: Awaitable[T]) -> T:
        """Run `body` between two snapshots (taken off the event loop: they block); what
        happened in between is `deltas[phase]`."""
        before = await asyncio.to_thread(self.snapshot)
        value = await body
        after = await asyncio.to_thread(self.snapshot)
        self.deltas[phase] = after.since(before)
        return value

    @property
    def a(self) -> str:
        return self.servers[0].address

    @property
    def b(self) -> str:
        return self.servers[1].address

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.query(statement, params)


def cpu_seconds_with_children(pid: int) -> float:
    """A server's CPU time with its children's: PostgreSQL's work is in its backends,
    each a child of the postmaster (the live ones' own time, plus cutime and cstime:
    what exited ones used, once the postmaster has reaped them)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    total = procs.cpu_seconds(pid) + reaped
    for child in procs.children(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += procs.cpu_seconds(child)
    return total


MACHINE = "machine, every process"


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (/proc/stat: all but
    idle and iowait), whoever used it: with the cluster's own processes, it says what
    else ran, and whether the cores were all taken."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _proxy_pid() -> int | None:
    """The proxy process among this process's children (`python -m tests.sqld proxy`)."""
    for pid in procs.children(os.getpid()):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if b"tests.sqld\0proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


@contextlib.contextmanager
def cluster(
    directory: Path, db: backends.Database, store: str, concurrency: int
) -> Iterator[Cluster]:
    """Servers A and B and two workers on `db` (`store`'s): all ready, all stopped at
    the end."""
    seen_dir = directory / "cancel-seen"
    seen_dir.mkdir()
    with procs.fleet() as fleet:
        with ThreadPoolExecutor(len(SERVERS)) as pool:  # they start up in parallel
            starting = [
                pool.submit(
                    procs.Server.start, directory / f"server-{name}.log", db.config, metrics=True
                )
                for name in SERVERS
            ]
        for future in starting:
            if future.exception() is None:
                fleet.add(future.result())  # stopped at the end even if the other failed
        started = [future.result() for future in starting]
        workers = procs.workers(
            directory,
            db.config,
            2,
            concurrency=concurrency,
            handlers=HANDLERS,
            metrics=True,
            env={"BENCH_CANCEL_DIR": str(seen_dir)},
            into=fleet,
        )
        pids = {f"server {n}": s.pid for n, s in zip(SERVERS, started, strict=True)}
        pids |= {f"worker {n}": w.pid for n, w in enumerate(workers, start=1)}
        server_pid = db.server_pid()
        if server_pid is not None:
            pids["postgres" if db.postgres is not None else "sqld"] = server_pid
        proxy = _proxy_pid()
        if proxy is not None:
            pids["proxy"] = proxy
        canary_path = directory / "canary.txt"
        command = [sys.executable, "-m", "bench.loop_canary", str(canary_path)]
        canary_log = directory / "canary.log"
        canary = procs.Process(procs.spawn(command, canary_log, {}), canary_log)
        fleet.add(canary)
        pids["canary"] = canary.pid
        pids["bench client"] = os.getpid()
        yield Cluster(db, store, started, workers, seen_dir, canary_path, pids)


# ---- calibration: each store operation alone ----------------------------------------------


def _spec(index: int, key: bool = False) -> JobSpec:
    return JobSpec(
        type="bench.calibration",
        payload={"index": index},
        idempotency_key=f"calibration-{index}" if key else None,
    )


async def calibrate(db: backends.Database) -> dict[str, dict[str, float]]:
    """Requests per call (the proxy's count over CALIBRATION_CALLS calls) and median ms
    per call of each store operation, from this process with nothing else running."""
    lease = timedelta(minutes=10)
    worker = f"bench-calibration-{os.getpid()}"
    store: JobStore = await open_store(db.config)  # creates the schema too
    found: dict[str, dict[str, float]] = {}
    counter = iter(range(10**9))

    async def measure(name: str, call: Callable[[], Awaitable[Any]]) -> list[Any]:
        before = await asyncio.to_thread(db.requests_so_far)
        times, values = [], []
        for _ in range(CALIBRATION_CALLS):
            started = time.perf_counter()
            values.append(await call())
            times.append(time.perf_counter() - started)
        requests = await asyncio.to_thread(db.requests_so_far) - before
        found[name] = {
            "requests": requests / CALIBRATION_CALLS,
            "ms": 1000 * statistics.median(times),
        }
        return values

    try:
        await measure("create_job", lambda: store.create_job(_spec(next(counter))))
        await measure(
            "create_jobs (1,000)",
            lambda: store.create_jobs([_spec(next(counter)) for _ in range(1_000)]),
        )
        await measure(
            "create_jobs (1,000, idempotency keys)",
            lambda: store.create_jobs([_spec(next(counter), key=True) for _ in range(1_000)]),
        )
        await measure(
            "has_claimable_jobs", lambda: store.has_claimable_jobs(types=["bench.calibration"])
        )
        claimed = await measure(
            "claim_jobs (limit 8)",
            lambda: store.claim_jobs(
                worker_id=worker, types=["bench.calibration"], limit=8, lease_timeout=lease
            ),
        )
        jobs = [job for batch in claimed for job in batch]
        first = jobs[0]
        assert first.lease_id is not None
        await measure(
            "report_progress",
            lambda: store.report_progress(
                job_id=first.id, lease_id=first.lease_id or "", progress=Progress(50.0)
            ),
        )
        await measure(
            "heartbeat_job",
            lambda: store.heartbeat_job(
                job_id=first.id, lease_id=first.lease_id or "", lease_timeout=lease
            ),
        )
        await measure("list_cancel_requests", lambda: store.list_cancel_requests(worker_id=worker))
        cancelled = jobs[1 : 1 + CALIBRATION_CALLS]
        to_cancel = iter(cancelled)
        await measure("cancel_job (running)", lambda: store.cancel_job(next(to_cancel).id))
        to_record = iter(cancelled)
        await measure(
            "record_cancelled",
            lambda: store.record_cancelled(
                job_id=(job := next(to_record)).id, lease_id=job.lease_id or ""
            ),
        )
        rest = jobs[1 + CALIBRATION_CALLS :]
        batches = iter([rest[6 * n : 6 * n + 6] for n in range(CALIBRATION_CALLS)])
        await measure(
            "complete_jobs (6)",
            lambda: store.complete_jobs(
                [Completion(j.id, j.lease_id or "", {}) for j in next(batches)]
            ),
        )
        last = await store.last_sequence()
        await measure("last_sequence", store.last_sequence)
        await measure(
            "list_events (tail, 100)",
            lambda: store.list_events(after_sequence=max(0, last - 100), limit=1_000),
        )
        await measure("latest_events (8 jobs)", lambda: store.latest_events([j.id for j in jobs]))
        await measure("reap", store.reap)
        await _drain_calibration(store, worker)
    finally:
        await store.close()
    return found


async def _drain_calibration(store: JobStore, worker: str) -> None:
    """Finish every calibration job still pending (some 10,000): left there, they sort
    ahead of every job the cluster runs, and each claim walks past them (no worker
    serves their type), which is a backlog the phases are not about."""
    lease = timedelta(minutes=10)
    while True:
        jobs = await store.claim_jobs(
            worker_id=worker, types=["bench.calibration"], limit=1_000, lease_timeout=lease
        )
        if not jobs:
            return
        await store.complete_jobs([Completion(j.id, j.lease_id or "", {}) for j in jobs])


# ---- the phases ---------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], what: str, interval: float = 0.02) -> None:
    """`rpc.until` for conditions that block (reads from sqld): off the event loop."""
    deadline = time.monotonic() + WAIT
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {WAIT:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def _rows_of(c: Cluster, columns: str, job_ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """In both dialects: one `?` per id (a phase has a few dozen at most)."""
    marks = ", ".join("?" * len(job_ids))
    return c.query(f"SELECT {columns} FROM jobs WHERE id IN ({marks})", list(job_ids))


async def claim_phase(c: Cluster) -> list[float]:
    async with rpc.stubs(c.a) as (a,):
        await a.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)  # connected

        async def body() -> list[float]:
            ids: list[str] = []
            for _ in range(CLAIM_SAMPLES):
                ids += await rpc.submit(a, [rpc.request(seconds=0, steps=0)])
                await asyncio.sleep(random.uniform(0.10, 0.25))
            waits: list[tuple[Any, ...]] = []

            def claimed() -> bool:
                waits[:] = _rows_of(c, "start_us - create_us", ids)
                return all(w is not None for (w,) in waits)

            await _until(claimed, "the jobs to be claimed")
            return [us / 1e6 for (us,) in waits]

        return await c.measure("claim", body())


@dataclass
class ProgressSeen:
    by_server: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SERVERS})


async def progress_phase(c: Cluster) -> ProgressSeen:
    seen = ProgressSeen()
    async with rpc.stubs(c.a) as (a,), rpc.stubs(c.b) as (b,):
        await a.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)
        await b.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)

        def recorder(server: str) -> streams.OnEvent:
            def on_event(index: int, event: pb.JobEvent, arrived: float) -> None:
                if event.kind == pb.EVENT_KIND_PROGRESS:
                    seen.by_server[server].append(arrived - float(event.job.progress.message))

            return on_event

        async def body() -> None:
            payload = {"updates": PROGRESS_UPDATES, "spacing": PROGRESS_SPACING}
            requests = [
                rpc.request("bench.progress_probe", **payload, after=PROGRESS_AFTER)
                for _ in range(PROGRESS_JOBS)
            ]
            ids = await rpc.submit(a, requests)
            watching = [
                streams.Streams([stub], ids, recorder(name))
                for name, stub in zip(SERVERS, (a, b), strict=True)
            ]
            try:
                for watch in watching:
                    await watch.open(len(ids), wait=WAIT)
                await rpc.until(  # WatchJob ends after the job's terminal event
                    lambda: all(watch.ended >= len(ids) for watch in watching),
                    "every watch to end",
                    wait=WAIT,
                )
            finally:
                for watch in watching:
                    await watch.close()

        await c.measure("progress", body())
    return seen


async def cancel_phase(c: Cluster) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"handler": [], "recorded": [], "watched": []}
    async with rpc.stubs(c.a) as (a,), rpc.stubs(c.b) as (b,):
        await a.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)
        await b.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)

        async def body() -> None:
            requests = [rpc.request("bench.cancel_probe", seconds=60) for _ in range(CANCEL_JOBS)]
            job_ids, sent, found["watched"] = await cancel_latency.cancel_round(
                a, [a], requests, canceller=b
            )
            for job_id, sent_at in zip(job_ids, sent, strict=True):
                seen = float((c.seen_dir / job_id).read_text())
                found["handler"].append(seen - sent_at)
            ends = dict(await asyncio.to_thread(_rows_of, c, "id, end_us", job_ids))
            found["recorded"] = [ends[j] / 1e6 - s for j, s in zip(job_ids, sent, strict=True)]

        await c.measure("cancel", body())
    return found


@dataclass(frozen=True)
class Settings:
    jobs: int = JOBS  # in the throughput phase
    concurrency: int = CONCURRENCY  # slots per worker
    batch: int = BATCH  # jobs per SubmitJobs call
    dashboards: bool = False  # a WatchJobs reader on each server in the throughput phase


async def _dashboard(address: str, read: list[int]) -> None:
    """WatchJobs from now on, on a connection of its own, reading every message until
    cancelled (resuming where it was if the server ends the stream), as an open
    dashboard does."""
    after: int | None = None
    async with rpc.stubs(address) as (stub,):
        while True:
            stream = stub.WatchJobs(api.WatchJobsRequest(after_sequence=after))
            try:
                async for message in stream:
                    read[0] += 1
                    after = message.event.sequence
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise


async def throughput_phase(
    c: Cluster, how: Settings, profile: str | None = None
) -> throughput.Outcome:
    jobs = how.jobs
    requests = [rpc.request(seconds=0, steps=0) for _ in range(jobs)]
    batches = [requests[i : i + how.batch] for i in range(0, jobs, how.batch)]
    async with rpc.stubs(c.a) as (a,), rpc.stubs(c.b) as (b,):
        await a.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)
        await b.ListWorkers(api.ListWorkersRequest(), timeout=WAIT)

        async def submitter(stub: rpc.Stub, mine: Sequence[list[api.SubmitJobRequest]]) -> None:
            for batch in mine:
                await rpc.submit(stub, batch)

        read = [0]
        dashboards = [
            asyncio.create_task(_dashboard(address, read))
            for address in ((c.a, c.b) if how.dashboards else ())
        ]

        async def body() -> throughput.Outcome:
            started = time.time()
            await asyncio.gather(submitter(a, batches[0::2]), submitter(b, batches[1::2]))
            submitted = time.time()

            def drained() -> bool:
                """Whether no job of the phase is left to run. Each probe walks the
                index its order names (`jobs_claimable`, `jobs_lease_expiry`) and stops
                at the first row, whatever the table's statistics say: counting the
                finished jobs each time read every one of them, on the store measured."""
                for probe in (
                    "SELECT 1 FROM jobs WHERE state = 'PENDING' AND type = 'demo.sleep'"
                    " ORDER BY priority DESC, run_after_us, create_us, id LIMIT 1",
                    "SELECT 1 FROM jobs WHERE state = 'RUNNING' AND type = 'demo.sleep'"
                    " ORDER BY lease_expire_us LIMIT 1",
                ):
                    if c.query(probe):
                        return False
                return True

            await _until(drained, f"{jobs:,} jobs to finish", interval=0.1)
            ((succeeded, end_us),) = c.query(
                "SELECT count(*), max(end_us) FROM jobs"
                " WHERE state = 'SUCCEEDED' AND type = 'demo.sleep' AND create_us >= ?",
                [int(started * 1e6)],
            )
            if succeeded != jobs:
                raise RuntimeError(f"{jobs - succeeded:,} of {jobs:,} jobs did not succeed")
            return throughput.Outcome(
                jobs, (end_us or 0) / 1e6 - started, submitted - started, watched=read[0]
            )

        pids = c.pids if profile else {}
        with contextlib.ExitStack() as stack:
            for name in ("server A", "worker 1"):
                if name in pids:
                    label = f"cluster-{profile}-{name.replace(' ', '-')}"
                    stack.enter_context(profiling.profile(pids[name], label))
            try:
                return await c.measure("throughput", body())
            finally:
                for task in dashboards:
                    task.cancel()
                await asyncio.gather(*dashboards, return_exceptions=True)


# ---- one run ------------------------------------------------------------------------------


@dataclass
class RunResult:
    calibration: dict[str, dict[str, float]]
    claim: list[float]
    progress: ProgressSeen
    cancel: dict[str, list[float]]
    drained: throughput.Outcome
    deltas: dict[str, Delta]


async def _phases(c: Cluster, how: Settings, profile: str | None) -> RunResult:
    await c.measure("idle", asyncio.sleep(IDLE))
    print(" claim", end="", flush=True)
    claim = await claim_phase(c)
    print(" progress", end="", flush=True)
    progress = await progress_phase(c)
    print(" cancel", end="", flush=True)
    cancel = await cancel_phase(c)
    print(" throughput", end="", flush=True)
    drained = await throughput_phase(c, how, profile)
    read = f" ({drained.watched:,} read by the dashboards)" if how.dashboards else ""
    print(f" {drained.rate:,.0f} jobs/s{read};", end="", flush=True)
    return RunResult({}, claim, progress, cancel, drained, c.deltas)


def one_run(directory: Path, shape: Shape, how: Settings, profile: str | None = None) -> RunResult:
    """A fresh database of `shape.store` (for sqld, a fresh sqld and proxy) at
    `shape.rtt_ms`: calibration, then the cluster's phases."""
    os.sync()  # see the module docstring
    print(f" {shape.label}: calibration", end="", flush=True)
    backend, rtt = BACKEND[shape.store], shape.rtt_ms / 1000
    poll_only = shape.store == "postgres-poll"
    with backends.serve(backend, directory / "cluster.db", rtt=rtt, poll_only=poll_only) as db:
        calibration = rpc.run(calibrate(db))
        with cluster(directory, db, shape.store, how.concurrency) as c:
            result = rpc.run(_phases(c, how, profile))
        canary = loop_canary.read(c.canary_path)  # complete: the canary has stopped
    for delta in result.deltas.values():
        delta.canary = [lag for at, lag in canary if delta.start <= at < delta.end]
    result.calibration = calibration
    return result


# ---- figures ------------------------------------------------------------------------------


def collect(figures: Figures, shape: Shape, run: RunResult) -> None:
    """One run's figures, keyed `<store>.<rtt>ms.<name>`."""

    def add(name: str, value: float) -> None:
        figures.add(f"{shape.key}.{name}", value)

    def add_all(prefix: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            add(f"{prefix}.{key}", value)

    drained = run.drained
    add("rate", drained.rate)
    add("submit_rate", drained.submit_rate)
    add("seconds", drained.seconds)
    phase = run.deltas["throughput"]
    add("requests_per_job", phase.requests / drained.jobs)
    for op, calls in phase.calls.items():
        add(f"calls_per_job.{op}", calls / drained.jobs)
    add("jobs_per_claim", drained.jobs / max(1.0, phase.calls.get("claim_jobs", 0.0)))
    add("jobs_per_completion", drained.jobs / max(1.0, phase.calls.get("complete_jobs", 0.0)))
    add_all("cpu", phase.cpu_percent())
    for op in CALLS_TIMED:
        if phase.call_time.get(op):
            stats = histogram_stats_ms(phase.call_time[op])
            add(f"call_ms.{op}.p50", stats["p50"])
            add(f"call_ms.{op}.p99", stats["p99"])
    for name, delta in run.deltas.items():
        add_all(f"lag.{name}", histogram_stats_ms(delta.lag))
        if delta.canary:
            add(f"canary.{name}.p99", 1000 * percentile(delta.canary, 0.99))
            late = sum(1 for lag in delta.canary if lag > LATE)
            add(f"canary.{name}.late_percent", 100 * late / len(delta.canary))
        add(f"requests_per_s.{name}", delta.requests / delta.seconds)
        calls = sum(delta.calls.values())
        add(f"requests_per_call.{name}", delta.requests / calls if calls else float("nan"))
        add(f"calls_per_s.{name}", calls / delta.seconds)
    everything: dict[float, float] = {}
    for delta in run.deltas.values():
        for le, n in delta.lag.items():
            everything[le] = everything.get(le, 0.0) + n
    add_all("lag.all", histogram_stats_ms(everything))
    add("lag.worst_p99", max(histogram_stats_ms(d.lag)["p99"] for d in run.deltas.values()))
    add_all("claim", percentiles_ms(run.claim))
    expected = PROGRESS_JOBS * PROGRESS_UPDATES
    for server, latencies in run.progress.by_server.items():
        add_all(f"progress.{server}", percentiles_ms(latencies, fractions=(0.5, 0.9, 0.99)))
        add(f"progress.{server}.delivered", 100 * len(latencies) / expected)
    progress = run.deltas["progress"]
    writes = progress.calls.get("report_progress", 0.0)
    if writes and progress.requests:  # sqld only: the proxy counts no other store's
        add("progress_write_share", 100 * writes / progress.requests)
    for kind, latencies in run.cancel.items():
        add_all(f"cancel.{kind}", percentiles_ms(latencies))
    for op, measured in run.calibration.items():
        add(f"calibration.{op}.requests", measured["requests"])
        add(f"calibration.{op}.ms", measured["ms"])


def _fig(figures: Figures, shape: Shape, key: str) -> Figure:
    return figures[f"{shape.key}.{key}"]


def _pair(figures: Figures, shape: Shape, key: str) -> str:
    """`p50 / p99` of a latency, each median (min-max) over runs."""
    return (
        f"{_fig(figures, shape, f'{key}.p50').cell()} / {_fig(figures, shape, f'{key}.p99').cell()}"
    )


SQLITE = Shape("sqlite", 0)


def goal_rate(figures: Figures, shape: Shape) -> tuple[float | None, str]:
    """The throughput goal (jobs/s) and how it reads: sqld's by RTT; on PostgreSQL at
    0 ms, the SQLite store's rate in the same invocation (if it ran)."""
    if shape.store == "sqld" and shape.rtt_ms in GOAL_RATE:
        goal = GOAL_RATE[shape.rtt_ms]
        return goal, f">= {goal:,.0f}"
    sqlite = _fig(figures, SQLITE, "rate").median
    if shape.store == "postgres" and shape.rtt_ms == 0 and not math.isnan(sqlite):
        return sqlite, f">= sqlite's {sqlite:,.0f}"
    return None, ""


def goal_progress(shape: Shape) -> float | None:
    """Progress p99 to the other server, ms."""
    if shape.store == "sqld":
        return goal_progress_ms(shape.rtt_ms)
    if shape.store == "postgres" and shape.rtt_ms == 0:
        return GOAL_PG_PROGRESS_P99_MS
    return None


def goal_claim(shape: Shape) -> float | None:
    """Claim p50, ms."""
    return GOAL_PG_CLAIM_P50_MS if shape.store == "postgres" and shape.rtt_ms == 0 else None


def goal_lag(shape: Shape) -> float | None:
    return GOAL_LAG_P99_MS.get(shape.rtt_ms) if shape.store == "sqld" else None


def _at_most(value: float, goal: float | None) -> tuple[str, str]:
    if goal is None:
        return "", ""
    return f"<= {goal:g}", report.verdict(value <= goal)


def render_side_by_side(figures: Figures, shapes: Sequence[Shape]) -> str:
    """The stores next to each other: the figures each store's goals are about."""
    rows = []
    for shape in shapes:
        f = functools.partial(_fig, figures, shape)
        rows.append(
            (
                shape.label,
                f("rate").cell(),
                _pair(figures, shape, "progress.B"),
                _pair(figures, shape, "claim"),
                _pair(figures, shape, "cancel.handler"),
                _pair(figures, shape, "cancel.recorded"),
            )
        )
    return report.table(
        "Side by side: 2 servers + 2 workers on one store (median (min-max) over runs)",
        (
            "store",
            "jobs/s",
            "progress -> other server, p50 / p99 ms",
            "idle claim, p50 / p99 ms",
            "cancel -> handler, p50 / p99 ms",
            "cancel -> recorded, p50 / p99 ms",
        ),
        rows,
        notes=[
            "progress: a worker's report_progress (stamped just before the call) to a WatchJob "
            "watcher on server B, which neither submitted the job nor wrote the progress.",
            "idle claim: one job at a time submitted through A into idle workers; "
            "start_time - create_time. cancel: CancelJob through B of a job running on "
            "a worker, to the handler seeing it / CANCELLED recorded.",
        ],
    )


def render(figures: Figures, shapes: Sequence[Shape], runs: int, how: Settings) -> str:
    def f(shape: Shape, name: str) -> Figure:
        return _fig(figures, shape, name)

    goals: list[tuple[str, ...]] = []
    for shape in shapes:
        rate = f(shape, "rate")
        goal, text = goal_rate(figures, shape)
        met = rate.median >= goal if goal is not None else None
        goals.append(
            ("end-to-end throughput, jobs/s", shape.label, rate.cell(), text, report.verdict(met))
        )
    for shape in shapes:
        p99 = f(shape, "progress.B.p99")
        goals.append(
            (
                "progress p99, worker write -> watcher on server B, ms",
                shape.label,
                p99.cell(),
                *_at_most(p99.median, goal_progress(shape)),
            )
        )
    for shape in shapes:
        p50 = f(shape, "claim.p50")
        goals.append(
            (
                "idle claim p50, ms",
                shape.label,
                p50.cell(),
                *_at_most(p50.median, goal_claim(shape)),
            )
        )
    for shape in shapes:
        worst = f(shape, "lag.worst_p99")
        goals.append(
            (
                "event-loop lag p99, both servers, worst phase, ms",
                shape.label,
                worst.cell(1),
                *_at_most(worst.median, goal_lag(shape)),
            )
        )
    for shape in shapes:
        late = f(shape, "lag.throughput.late_percent")
        strict = goal_lag(shape) == LATE * 1000
        goals.append(
            (
                f"event-loop lag, throughput phase: % of samples > {LATE * 1000:g} ms",
                shape.label,
                late.cell(1),
                "<= 1" if strict else "",
                report.verdict(late.median <= 1 if strict else None),
            )
        )
    for shape in shapes:
        goals.append(
            (
                "event-loop lag p99, both servers, all phases pooled, ms",
                shape.label,
                f(shape, "lag.all.p99").cell(1),
                "",
                "",
            )
        )
    for name, key in (
        ("claim latency p50 / p99, ms", "claim"),
        ("cancel: CancelJob on B -> handler sees it, p50 / p99, ms", "cancel.handler"),
        ("cancel: CancelJob on B -> CANCELLED recorded, p50 / p99, ms", "cancel.recorded"),
        ("cancel: CancelJob on B -> CANCELLED at a watcher on A, p50 / p99, ms", "cancel.watched"),
        ("progress p50 / p99, watcher on server A (submitted there), ms", "progress.A"),
        ("progress p50 / p99, watcher on server B, ms", "progress.B"),
    ):
        for shape in shapes:
            goals.append((name, shape.label, _pair(figures, shape, key), "", ""))
    for shape in shapes:
        if shape.store == "sqld":
            goals.append(
                (
                    "HTTP requests per job, end to end",
                    shape.label,
                    f(shape, "requests_per_job").cell(3),
                    "",
                    "",
                )
            )
    stores = {shape.store for shape in shapes}
    notes = [
        f"{runs} run{'s' if runs != 1 else ''} per store and RTT; median (min-max) over runs; "
        "percentiles pool one run's samples.",
        f"throughput: {how.jobs:,} demo.sleep {{seconds: 0, steps: 0}} jobs, SubmitJobs "
        f"batches of {how.batch:,} alternating between servers A and B; 2 workers x "
        f"{how.concurrency} slots"
        + ("; one WatchJobs reader of every event on each server." if how.dashboards else "."),
        f"progress: {PROGRESS_JOBS} probes x {PROGRESS_UPDATES} updates "
        f"{PROGRESS_SPACING * 1000:.0f}-{PROGRESS_SPACING * 1500:.0f} ms apart; goal on sqld: "
        f"the server's tail interval ({TAIL_MS:.0f} ms) plus two round trips; on postgres at "
        f"0 ms: {GOAL_PG_PROGRESS_P99_MS:g} ms.",
        f"claim: {CLAIM_SAMPLES} jobs submitted one at a time through A; start_time - "
        f"create_time. cancel: {CANCEL_JOBS} running probes cancelled through B.",
        "event-loop lag: how late each server ran a 20 ms timer (histogram buckets: a "
        "figure is the bucket's upper bound).",
    ]
    if "sqld" in stores:
        notes.append(backends.remote_note("adding the RTT shown"))
    if "postgres-poll" in stores:
        notes.append(
            "postgres-poll: the same with JOB_STORE_POLL_ONLY=1 (no LISTEN, as behind "
            "PgBouncer): every wake-up is a poll."
        )
    if stores & {"postgres", "postgres-poll"}:
        notes.append(
            f"postgres: PostgreSQL {backends.postgres_version()} (default settings: fsync and "
            "synchronous_commit on) on loopback, psycopg "
            f"{importlib.metadata.version('psycopg')}; at +0 ms directly, else through the "
            "delay proxy."
        )
    if "sqlite" in stores:
        notes.append("sqlite: JOB_STORE_BACKEND=local, the four processes on one WAL file.")
    table = report.table(
        "Two servers and two workers on one store, by store and added round trip (RTT)",
        ("figure", "store", "median (min-max)", "goal", ""),
        goals,
        align="<<><<",
        notes=notes,
    )
    details = [render_calibration(figures, shapes), render_phases(figures, shapes)]
    return "\n\n".join(
        [render_side_by_side(figures, shapes), table, *details, render_calls(figures, shapes)]
    )


def _named(figures: Figures, shapes: Sequence[Shape], part: str, suffix: str = "") -> list[str]:
    """The names under `<shape>.<part>.` (less `suffix`) in any shape, in first-seen order."""
    found: dict[str, None] = {}
    for key in figures:
        for shape in shapes:
            prefix = f"{shape.key}.{part}."
            if key.startswith(prefix) and key.endswith(suffix):
                found[key[len(prefix) : len(key) - len(suffix)]] = None
    return list(found)


def render_calibration(figures: Figures, shapes: Sequence[Shape]) -> str:
    rows = []
    for op in _named(figures, shapes, "calibration", ".ms"):
        requests = [
            f"{_fig(figures, s, f'calibration.{op}.requests').median:g}"
            for s in shapes
            if s.store == "sqld"
        ]
        cells = [_fig(figures, shape, f"calibration.{op}.ms").cell(1) for shape in shapes]
        rows.append((op, requests[0] if requests else "", *cells))
    return report.table(
        "Store operations alone: HTTP requests per call on sqld (the proxy's count), ms per call",
        ("operation", "requests/call", *(f"ms, {shape.label}" for shape in shapes)),
        rows,
        notes=[
            f"this process's own store (through the same proxy, if any), {CALIBRATION_CALLS} "
            "calls each, before the servers and workers start; ms: median call."
        ],
    )


def render_phases(figures: Figures, shapes: Sequence[Shape]) -> str:
    rows = []
    for name in PHASES:
        for shape in shapes:
            f = functools.partial(_fig, figures, shape)
            rows.append(
                (
                    name,
                    shape.label,
                    f(f"requests_per_s.{name}").cell(),
                    f(f"requests_per_call.{name}").cell(2),
                    f"{f(f'lag.{name}.p50').median:g}",
                    f(f"lag.{name}.p99").cell(1),
                    f"{f(f'lag.{name}.max').median:g}",
                    f(f"lag.{name}.late_percent").cell(1),
                    f"{f(f'lag.{name}.samples').median:,.0f}",
                    f(f"canary.{name}.p99").cell(1),
                    f(f"canary.{name}.late_percent").cell(1),
                )
            )
    cpu_rows = []
    for process in _named(figures, shapes, "cpu"):
        cells = [
            _fig(figures, shape, f"cpu.{process}").cell()
            if f"{shape.key}.cpu.{process}" in figures
            else ""
            for shape in shapes
        ]
        cpu_rows.append((process, *cells))
    phases = report.table(
        "By phase: HTTP requests (sqld), and the servers' event-loop lag (ms, bucket bounds)",
        ("phase", "store", "requests/s", "requests/store call", "lag p50", "lag p99",
         "lag max", f"% > {LATE * 1000:g} ms", "lag samples", "canary p99",
         f"canary % > {LATE * 1000:g} ms"),
        rows,
        align="<<>>>>>>>>>",
        notes=[
            "requests/store call: the proxy's count over every store call the four processes "
            "made (their own counters); 0 where the store is not sqld;",
            "canary: a bare asyncio loop in its own process sleeping 20 ms at a time "
            "(bench/loop_canary.py), exact ms: what the machine costs any loop.",
        ],
    )  # fmt: skip
    cpu = report.table(
        "CPU during the throughput phase, % of one core",
        ("process", *(shape.label for shape in shapes)),
        cpu_rows,
        notes=[
            "postgres: the postmaster and its backends (the live ones and those reaped).",
            f"{MACHINE}: all the machine's cores together ({os.cpu_count()} here, so at most "
            f"{100 * (os.cpu_count() or 1)}), whoever used them: the rest is other work.",
        ],
    )
    return f"{phases}\n\n{cpu}"


def render_calls(figures: Figures, shapes: Sequence[Shape]) -> str:
    def cell(shape: Shape, op: str) -> str:
        key = f"{shape.key}.calls_per_job.{op}"
        return figures[key].cell(4) if key in figures else "0"  # never called there

    ops = sorted(
        _named(figures, shapes, "calls_per_job"),
        key=lambda op: (
            -max(
                _fig(figures, shape, f"calls_per_job.{op}").median
                for shape in shapes
                if f"{shape.key}.calls_per_job.{op}" in figures
            )
        ),
    )
    rows: list[tuple[str, ...]] = [
        (op, *(cell(shape, op) for shape in shapes))
        for op in ops
        if any(_fig(figures, s, f"calls_per_job.{op}").median >= 0.00005 for s in shapes)
    ]
    rows.append(("jobs per claim", *(_fig(figures, s, "jobs_per_claim").cell(1) for s in shapes)))
    rows.append(
        (
            "jobs per completion batch",
            *(_fig(figures, s, "jobs_per_completion").cell(1) for s in shapes),
        )
    )
    rows.append(
        (
            "HTTP requests per job (sqld)",
            *(_fig(figures, s, "requests_per_job").cell(4) for s in shapes),
        )
    )
    calls = report.table(
        "Throughput phase: store calls per job, by operation (all four processes)",
        ("operation", *(shape.label for shape in shapes)),
        rows,
        notes=["operations under 0.0001 calls per job everywhere are left out."],
    )

    def timed(shape: Shape, op: str) -> str:
        p50, p99 = (f"{shape.key}.call_ms.{op}.{p}" for p in ("p50", "p99"))
        if p50 not in figures:
            return "-"
        return f"{figures[p50].cell(1)} / {figures[p99].cell(1)}"

    times = report.table(
        "Throughput phase: store call time, p50 / p99 ms, by operation (all four processes)",
        ("operation", *(shape.label for shape in shapes)),
        [(op, *(timed(shape, op) for shape in shapes)) for op in CALLS_TIMED],
        notes=[
            "from each process's jobcontrol_store_call_duration_seconds: a figure is its "
            "bucket's upper bound (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250 ms, 1 s, 5 s); the "
            "call's wait for a connection or the driver thread is in it."
        ],
    )
    return f"{calls}\n\n{times}"


def headlines(figures: Figures, shapes: Sequence[Shape]) -> list[Headline]:
    found = []
    for shape in shapes:
        f = functools.partial(_fig, figures, shape)
        where = shape.label
        goal, text = goal_rate(figures, shape)
        found.append(
            Headline.of(
                "cluster", "end-to-end, 2 servers + 2 workers", where, f("rate"), "jobs/s",
                goal=text, met=f("rate").median >= goal if goal is not None else None,
            )
        )  # fmt: skip
        goal_ms = goal_progress(shape)
        found.append(
            Headline.of(
                "cluster", "progress p99, worker -> watcher on the other server", where,
                f("progress.B.p99"), "ms",
                goal=f"<= {goal_ms:.0f} ms" if goal_ms is not None else "",
                met=f("progress.B.p99").median <= goal_ms if goal_ms is not None else None,
            )
        )  # fmt: skip
        lag = goal_lag(shape)
        found.append(
            Headline.of(
                "cluster", "server event-loop lag p99, worst phase", where,
                f("lag.worst_p99"), "ms", digits=1,
                goal=f"<= {lag:g} ms" if lag else "",
                met=f("lag.worst_p99").median <= lag if lag else None,
            )
        )  # fmt: skip
        claim = goal_claim(shape)
        found.append(
            Headline.of(
                "cluster", "claim p50", where, f("claim.p50"), "ms",
                goal=f"<= {claim:g} ms" if claim is not None else "",
                met=f("claim.p50").median <= claim if claim is not None else None,
            )
        )  # fmt: skip
        found.append(
            Headline.of("cluster", "cancel p99 -> handler", where, f("cancel.handler.p99"), "ms")
        )
        if shape.store == "sqld":
            found.append(
                Headline.of(
                    "cluster", "HTTP requests per job", where, f("requests_per_job"), "", digits=3
                )
            )
    return found


def keep_logs(directory: Path) -> Path:
    """Copy a failed run's logs (servers, workers, sqld, proxy) out of its temporary
    directory, which is about to be removed; where they went."""
    kept = report.RESULTS / "failed" / f"cluster-{time.strftime('%Y%m%dT%H%M%S')}"
    for log in directory.rglob("*.log"):
        target = kept / log.relative_to(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)
    return kept


def _ints(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def _stores(text: str) -> list[str]:
    stores = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in stores if name not in STORES]
    if unknown or not stores:
        raise argparse.ArgumentTypeError(f"stores are {', '.join(STORES)}; got {text!r}")
    return stores


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("cluster", __doc__)
    parser.add_argument(
        "--stores",
        type=_stores,
        default=["sqld"],
        metavar="S,S,...",
        help=f"which of {', '.join(STORES)}, side by side (default sqld)",
    )
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"throughput jobs (default {JOBS})")
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help=f"slots per worker ({CONCURRENCY})"
    )
    parser.add_argument(
        "--batch", type=int, default=BATCH, help=f"jobs per SubmitJobs call (default {BATCH})"
    )
    parser.add_argument(
        "--rtts",
        type=_ints,
        default=list(RTTS_MS),
        help="added round trips, ms, for sqld and postgres (default 0,20)",
    )
    parser.add_argument(
        "--dashboards",
        action="store_true",
        help="a WatchJobs reader of every event on each server during the throughput phase",
    )
    parser.add_argument(
        "--sweep",
        type=_ints,
        default=None,
        metavar="C,C,...",
        help="one run per worker concurrency instead (throughput only is reported)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy server A and worker 1 in the last run's throughput phase "
        "(bench/results/profiles)",
    )
    args = parser.parse_args(argv)
    shapes = shapes_of(args.stores, args.rtts)
    began = time.perf_counter()
    figures = Figures()
    load: list[list[float]] = []
    concurrencies = args.sweep or [args.concurrency]
    sweep_rows = []
    failures: list[dict[str, Any]] = []
    for concurrency in concurrencies:
        sweep_figures = Figures() if args.sweep else figures
        runs = 1 if args.sweep else args.runs
        for run, directory in report.run_directories(runs, "cluster"):
            for shape in shapes:
                shape_dir = directory / f"{shape.store}-rtt-{shape.rtt_ms}"
                shape_dir.mkdir()
                profile = (
                    f"{shape.store}-{shape.rtt_ms}ms" if args.profile and run == runs else None
                )
                how = Settings(args.jobs, concurrency, args.batch, args.dashboards)
                try:
                    result = one_run(shape_dir, shape, how, profile)
                except Exception as error:
                    # Reported and counted, not hidden: the other runs still measure.
                    kept = keep_logs(shape_dir)
                    message = " ".join(str(error).split())[:300]
                    print(f"\nFAILED: {message}\n  logs kept in {kept}", flush=True)
                    failures.append(
                        {
                            "run": run,
                            "store": shape.store,
                            "rtt_ms": shape.rtt_ms,
                            "error": message,
                            "logs": str(kept),
                        }
                    )
                    continue
                collect(sweep_figures, shape, result)
            load.append([round(x, 2) for x in os.getloadavg()])
            print(f" load {load[-1][0]:.2f}", end="", flush=True)
        if args.sweep:
            sweep_rows.append(
                (
                    f"2 x {concurrency}",
                    *(_fig(sweep_figures, shape, "rate").cell() for shape in shapes),
                )
            )
    elapsed = time.perf_counter() - began
    attempted = len(concurrencies) * (1 if args.sweep else args.runs) * len(shapes)
    if failures:
        print(f"{len(failures)} of {attempted} runs FAILED (their figures are left out):")
        for failure in failures:
            print(
                f"  run {failure['run']}, {failure['store']} at {failure['rtt_ms']} ms: "
                f"{failure['error']}"
            )
        if len(failures) == attempted:
            return 1
    if args.sweep:
        print(
            report.table(
                f"Cluster throughput by worker concurrency, {args.jobs:,} jobs, one run each",
                ("workers x slots", *(f"jobs/s, {shape.label}" for shape in shapes)),
                sweep_rows,
            )
        )
        return 0
    how = Settings(args.jobs, args.concurrency, args.batch, args.dashboards)
    print(render(figures, shapes, args.runs, how))
    found = headlines(figures, shapes)
    if failures:
        found.append(
            Headline("cluster", "runs that FAILED", "all", f"{len(failures)} of {attempted}", "")
        )
    return report.finish(
        "cluster",
        runs=args.runs,
        elapsed=elapsed,
        headlines=found,
        failures=failures,
        workload={
            "stores": args.stores,
            "rtts_ms": args.rtts,
            "jobs": args.jobs,
            "workers": 2,
            "concurrency": args.concurrency,
            "servers": 2,
            "claim_samples": CLAIM_SAMPLES,
            "progress_jobs": PROGRESS_JOBS,
            "progress_updates": PROGRESS_UPDATES,
            "progress_spacing_s": PROGRESS_SPACING,
            "cancel_jobs": CANCEL_JOBS,
            "tail_interval_ms": TAIL_MS,
        },
        load_average_after_each_run=load,
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
