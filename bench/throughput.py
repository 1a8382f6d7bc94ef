"""End-to-end throughput: no-op jobs submitted over gRPC and drained by workers, beside
Huey (SqliteHuey) doing the same number of no-op tasks on the same machine.

jobcontrol: a fresh store, `jobcontrol-server` and WORKERS `jobcontrol-worker`
processes (CONCURRENCY slots each, default poll interval), all started and ready
before the clock starts. The clock starts just before the first SubmitJobs call; JOBS
`demo.sleep` jobs {"seconds": 0, "steps": 0} go in batches of 1,000 (one client, one
call after another) while the workers drain them; the clock stops at the `end_time`
of the last job to succeed (read from the database once every job is SUCCEEDED).

Huey: `huey_consumer bench.huey_tasks.huey` with HUEY_WORKERS workers of HUEY_TYPE on
a fresh SqliteHuey file (WAL, Huey's defaults), quiet logging, polling at most 0.1 s
apart when idle; warmed up with one task before the clock starts. The clock starts
just before the first enqueue; Huey has no bulk enqueue (`task.map` enqueues one at a
time), so the tasks go one per call from one client while the consumer drains them.
Results are not stored (the lighter mode: a result is a second write per task), so the
clock stops when the queue is found empty (polled every 10 ms), which can only flatter
Huey by a few ms.

`--watchers` adds clients that watch while the jobs drain, in the submitting process
(on connections of their own): `one` is a dashboard, one WatchJobs stream on every job
reading every message (resuming with after_sequence, as a client library does, if the
server ends it); `hundred` is 100 WatchJob streams, each opened on a random job of a
batch as soon as the batch is submitted and read until that job ends. Several values
run one after the other, each beside the same run's Huey. The clock is the same; the
table adds what the watchers read and how long after the last success the dashboard had
every job's terminal state.

Both run in every run, one after the other (their order alternating), so the ratio is
measured under the same conditions; the best configurations were found with
`--sweep` on this 2-core machine (see BENCHMARKS.md). On the remote backend (a real
sqld on loopback, see `backends.py`) only jobcontrol runs, with REMOTE_JOBS jobs: every
store operation is an HTTP request, and Huey has no libSQL storage. `bench.cluster` has
the remote end-to-end rate with two servers and two workers, with and without 20 ms of
round trip.

Run: `.venv/bin/python -m bench.throughput [--runs N] [--backend sqlite|remote|both]
[--jobs N] [--watchers none|one|hundred ...] [--sweep] [--profile]`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import backends, procs, profiling, report, rpc
from bench.report import Headline
from bench.stats import Figures
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

JOBS = 20_000
REMOTE_JOBS = JOBS  # the same workload: the remote driver takes one request per claim or batch
# The best of the --sweep configurations on the 2-core machine of BENCHMARKS.md (all
# within ~10% of each other: the drain is bound by per-job work, not by slots).
WORKERS = 1
CONCURRENCY = 64
HUEY_WORKERS = 1
HUEY_TYPE = "thread"
GOAL_RATIO = 3.0
WAIT = 600.0
WATCHERS = ("none", "one", "hundred")
WATCHER_LABELS = {
    "none": "",
    "one": "one WatchJobs reader",
    "hundred": "100 WatchJob watchers",
}
# The goals: with a dashboard attached as fast as without; with 100 watchers, at
# least half as fast.
WATCHER_GOALS = {"none": GOAL_RATIO, "one": GOAL_RATIO, "hundred": 1.5}
HUNDRED = 100

SWEEP_JOBCONTROL = ((1, 16), (1, 64), (2, 8), (2, 16), (2, 32), (3, 16), (4, 16))
SWEEP_HUEY = (
    (1, "thread"),
    (2, "thread"),
    (4, "thread"),
    (1, "process"),
    (2, "process"),
    (3, "process"),
    (4, "process"),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    jobs: int
    seconds: float  # first submit to last success
    submit_seconds: float  # first submit to last submit answered
    watched: int = 0  # messages the watchers read
    streams_ended: int = 0  # watch streams the server ended early (RESOURCE_EXHAUSTED)
    caught_up: float = 0.0  # last success to the dashboard having every job's end

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def submit_rate(self) -> float:
        return self.jobs / self.submit_seconds


@dataclass(slots=True)
class Watching:
    """What the watchers of one drain read."""

    messages: int = 0
    ended: int = 0  # streams the server ended early


async def _dashboard(stub: rpc.Stub, jobs: int, watching: Watching) -> float:
    """WatchJobs on every job, reading every message, until every job has succeeded;
    resumes from the last sequence read if the server ends the stream. From sequence 0,
    so it misses nothing even if its subscription starts after the first submit (the
    store is fresh). When it saw the last job end."""
    finished: set[str] = set()
    after = 0
    while True:
        stream = stub.WatchJobs(api.WatchJobsRequest(after_sequence=after))
        try:
            async for message in stream:
                watching.messages += 1
                event = message.event
                after = event.sequence
                if event.job.state == pb.JOB_STATE_SUCCEEDED:
                    finished.add(event.job.id)
                    if len(finished) == jobs:
                        stream.cancel()
                        return time.time()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            watching.ended += 1


async def _watch_job(stub: rpc.Stub, job_id: str, watching: Watching) -> None:
    """WatchJob on one job, reading every message until it ends with the job."""
    try:
        async for _ in stub.WatchJob(api.WatchJobRequest(job_id=job_id)):
            watching.messages += 1
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        watching.ended += 1


async def _submit_watched(
    stub: rpc.Stub,
    watcher_stubs: Sequence[rpc.Stub],
    requests: Sequence[api.SubmitJobRequest],
    watchers: str,
    watching: Watching,
    tasks: list[asyncio.Task[None]],
) -> None:
    """Submit in batches; with `hundred`, start HUNDRED watchers spread over the
    batches, each on a random job of its batch."""
    batches = range(0, len(requests), rpc.MAX_BATCH)
    for number, start in enumerate(batches):
        batch = requests[start : start + rpc.MAX_BATCH]
        response = await stub.SubmitJobs(api.SubmitJobsRequest(requests=batch), timeout=WAIT)
        if watchers != "hundred":
            continue
        share = (number + 1) * HUNDRED // len(batches) - number * HUNDRED // len(batches)
        for job in random.sample(list(response.jobs), min(share, len(response.jobs))):
            watcher = watcher_stubs[len(tasks) % len(watcher_stubs)]
            tasks.append(asyncio.create_task(_watch_job(watcher, job.id, watching)))


async def _drain(
    address: str,
    db: backends.Database,
    jobs: int,
    *,
    watchers: str = "none",
    profile_pids: tuple[int, int] | None = None,
) -> Outcome:
    requests = [rpc.request(seconds=0, steps=0) for _ in range(jobs)]
    worker_pid, server_pid = profile_pids or (None, None)
    watching = Watching()
    tasks: list[asyncio.Task[None]] = []
    connections = {"none": 0, "one": 1, "hundred": 10}[watchers]
    async with rpc.stubs(address) as (stub,), rpc.stubs(address, connections) as watcher_stubs:
        dashboard = (
            asyncio.create_task(_dashboard(watcher_stubs[0], jobs, watching))
            if watchers == "one"
            else None
        )
        with (
            profiling.profile(worker_pid, "throughput-worker"),
            profiling.profile(server_pid, "throughput-server"),
        ):
            started = time.time()
            await _submit_watched(stub, watcher_stubs, requests, watchers, watching, tasks)
            submitted = time.time()
            finished = 0.0

            def done() -> bool:
                nonlocal finished
                ((count, last_end),) = db.query(
                    "SELECT count(*), max(end_us) FROM jobs WHERE state = 'SUCCEEDED'"
                )
                finished = (last_end or 0) / 1e6
                return bool(count == jobs)

            await rpc.until(done, f"{jobs:,} jobs to succeed", wait=WAIT)
        caught_up = 0.0
        if dashboard is not None:
            caught_up = await asyncio.wait_for(dashboard, WAIT) - finished
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    return Outcome(
        jobs,
        finished - started,
        submitted - started,
        watched=watching.messages,
        streams_ended=watching.ended,
        caught_up=max(0.0, caught_up),
    )


def run_jobcontrol(
    backend: str,
    directory: Path,
    jobs: int,
    workers: int,
    concurrency: int,
    *,
    watchers: str = "none",
    profile: bool = False,
) -> Outcome:
    with procs.deployment(backend, directory) as (db, server, fleet):
        started = procs.workers(directory, db.config, workers, concurrency=concurrency, into=fleet)
        pids = (started[0].pid, server.pid) if profile else None
        drain = _drain(server.address, db, jobs, watchers=watchers, profile_pids=pids)
        return rpc.run(drain)


def run_huey(directory: Path, jobs: int, workers: int, kind: str) -> Outcome:
    """Huey in this process (the enqueuer) and a consumer process, on a fresh file."""
    env = {
        "BENCH_HUEY_DB": str(directory / "huey.db"),
        "BENCH_HUEY_RESULTS": "0",
        "PYTHONPATH": str(procs.ROOT),
    }
    os.environ.update(env)
    from bench import huey_tasks  # the bench extra: imported only when Huey runs

    tasks = importlib.reload(huey_tasks)  # a fresh instance, on this run's file
    huey = tasks.huey
    command = [sys.executable, "-m", "huey.bin.huey_consumer", "bench.huey_tasks.huey"]
    command += ["--workers", str(workers), "--worker-type", kind]
    command += ["--delay", "0.01", "--max-delay", "0.1", "--quiet", "--disable-health-check"]
    log_path = directory / "huey-consumer.log"
    consumer = procs.Process(procs.spawn(command, log_path, env), log_path)
    try:

        def drained(what: str) -> None:
            deadline = time.monotonic() + WAIT
            while huey.pending_count() > 0:
                if consumer.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"huey did not drain {what}:\n{consumer.log()}")
                time.sleep(0.01)

        tasks.noop()  # warm-up: the consumer is up and polling
        drained("the warm-up task")
        started = time.time()
        tasks.noop.map([()] * jobs)
        submitted = time.time()
        drained(f"{jobs:,} tasks")
        finished = time.time()
    finally:
        consumer.process.send_signal(2)  # SIGINT: Huey's graceful shutdown
        consumer.stop()
        huey.storage.close()
    return Outcome(jobs, finished - started, submitted - started)


def sweep(directory: Path, jobs: int) -> str:
    """One run of every configuration in SWEEP_*; a table of rates."""
    rows = []
    for workers, concurrency in SWEEP_JOBCONTROL:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            outcome = run_jobcontrol("sqlite", Path(tmp), jobs, workers, concurrency)
        rows.append(("jobcontrol", f"{workers} x {concurrency} slots", f"{outcome.rate:,.0f}"))
        print(rows[-1], flush=True)
    for workers, kind in SWEEP_HUEY:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            outcome = run_huey(Path(tmp), jobs, workers, kind)
        rows.append(("huey", f"{workers} {kind}", f"{outcome.rate:,.0f}"))
        print(rows[-1], flush=True)
    return report.table(
        f"Throughput sweep, {jobs:,} no-op jobs, one run each",
        ("system", "workers", "jobs/s"),
        rows,
        align="<<>",
    )


def _system(watchers: str) -> str:
    """The figures' name for jobcontrol with these watchers."""
    return "jobcontrol" if watchers == "none" else f"jobcontrol+{watchers}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("throughput", __doc__)
    backends.add_argument(parser)
    parser.add_argument("--jobs", type=int, default=JOBS, help=f"jobs per run (default {JOBS})")
    parser.add_argument(
        "--remote-jobs", type=int, default=REMOTE_JOBS, help=f"default {REMOTE_JOBS}"
    )
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--huey-workers", type=int, default=HUEY_WORKERS)
    parser.add_argument("--huey-type", choices=("thread", "process"), default=HUEY_TYPE)
    parser.add_argument(
        "--watchers",
        nargs="+",
        choices=WATCHERS,
        default=["none"],
        help="who watches the jobs drain: nobody, one WatchJobs reader of every event, or"
        " 100 WatchJob watchers on random jobs; several run one after the other"
        " (default none)",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="one run of each configuration instead"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the first worker and the server during the last SQLite run"
        " (bench/results/profiles)",
    )
    args = parser.parse_args(argv)
    watcher_modes: list[str] = list(dict.fromkeys(args.watchers))

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        if args.sweep:
            print(sweep(Path(tmp), args.jobs))
            return 0
        figures = Figures()
        for backend in backends.chosen(args.backend):
            jobs = args.jobs if backend == "sqlite" else args.remote_jobs
            for run in range(1, args.runs + 1):
                print(f"{backend} run {run}/{args.runs}:", end="", flush=True)
                order = ["jobcontrol", "huey"] if run % 2 else ["huey", "jobcontrol"]
                if backend != "sqlite":
                    order = ["jobcontrol"]
                systems = [
                    (system, watchers)
                    for system in order
                    for watchers in (watcher_modes if system == "jobcontrol" else ["none"])
                ]
                outcomes: dict[str, Outcome] = {}
                for system, watchers in systems:
                    name = system if system == "huey" else _system(watchers)
                    with tempfile.TemporaryDirectory(dir=tmp) as directory:
                        if system == "huey":
                            outcome = run_huey(
                                Path(directory), jobs, args.huey_workers, args.huey_type
                            )
                        else:
                            outcome = run_jobcontrol(
                                backend,
                                Path(directory),
                                jobs,
                                args.workers,
                                args.concurrency,
                                watchers=watchers,
                                profile=args.profile and run == args.runs,
                            )
                    outcomes[name] = outcome
                    print(f" {name} {outcome.rate:,.0f}/s", end="", flush=True)
                    figures.add(f"{backend}.{name}.rate", outcome.rate)
                    figures.add(f"{backend}.{name}.submit_rate", outcome.submit_rate)
                    figures.add(f"{backend}.{name}.seconds", outcome.seconds)
                    if watchers != "none":
                        figures.add(f"{backend}.{name}.watched", outcome.watched)
                        figures.add(f"{backend}.{name}.streams_ended", outcome.streams_ended)
                    if watchers == "one":
                        figures.add(f"{backend}.{name}.caught_up", outcome.caught_up)
                if "huey" in outcomes:
                    for watchers in watcher_modes:
                        name = _system(watchers)
                        ratio = outcomes[name].rate / outcomes["huey"].rate
                        figures.add(f"{backend}.{name}.ratio", ratio)
                        print(f", {name}/huey {ratio:.2f}", end="")
                print(flush=True)
    elapsed = time.perf_counter() - began

    rows: list[tuple[str, ...]] = []
    headlines: list[Headline] = []
    for backend in backends.chosen(args.backend):
        jobs = args.jobs if backend == "sqlite" else args.remote_jobs
        names = [_system(w) for w in watcher_modes]
        if backend == "sqlite":
            names.append("huey")
        for name, watchers in zip(names, [*watcher_modes, "none"], strict=False):
            setup = (
                f"{args.workers} workers x {args.concurrency} slots"
                if name != "huey"
                else f"{args.huey_workers} {args.huey_type} workers"
            )
            label = (
                "huey"
                if name == "huey"
                else " + ".join(part for part in ("jobcontrol", WATCHER_LABELS[watchers]) if part)
            )
            rate = figures[f"{backend}.{name}.rate"]
            watched = ended = caught_up = ""
            if f"{backend}.{name}.watched" in figures:
                watched = figures[f"{backend}.{name}.watched"].cell()
                ended = figures[f"{backend}.{name}.streams_ended"].cell()
            if f"{backend}.{name}.caught_up" in figures:
                caught_up = figures[f"{backend}.{name}.caught_up"].cell(2)
            rows.append(
                (
                    label,
                    backend,
                    f"{jobs:,}",
                    setup,
                    rate.cell(),
                    figures[f"{backend}.{name}.submit_rate"].cell(),
                    figures[f"{backend}.{name}.seconds"].cell(1),
                    watched,
                    ended,
                    caught_up,
                )
            )
            suffix = f", {WATCHER_LABELS[watchers]}" if WATCHER_LABELS.get(watchers) else ""
            measure = f"end-to-end rate{suffix}" if name != "huey" else "Huey end-to-end rate"
            headlines.append(Headline.of("throughput", measure, backend, rate, "jobs/s"))
        for watchers in watcher_modes:
            name = _system(watchers)
            if f"{backend}.{name}.ratio" not in figures:
                continue
            ratios = figures[f"{backend}.{name}.ratio"]
            goal = WATCHER_GOALS[watchers]
            label = " + ".join(part for part in ("ratio", WATCHER_LABELS[watchers]) if part)
            rows.append((label, backend, "", "", ratios.cell(2), "", "", "", "", ""))
            suffix = f", {WATCHER_LABELS[watchers]}" if WATCHER_LABELS[watchers] else ""
            headlines.append(
                Headline.of(
                    "throughput",
                    f"jobcontrol / Huey{suffix}",
                    backend,
                    ratios,
                    "x",
                    digits=2,
                    goal=f">= {goal:g}x",
                    met=ratios.median >= goal,
                )
            )
    print(
        report.table(
            f"Throughput, no-op jobs, median of {args.runs} runs (min-max)",
            (
                "system",
                "backend",
                "jobs",
                "workers",
                "jobs/s",
                "submitted/s",
                "seconds",
                "watched",
                "ended",
                "caught up s",
            ),
            rows,
            align="<<><>>>>>>",
            notes=[
                "jobs/s: first submit to last job finished; submitted/s: the submit calls",
                "  alone (jobcontrol: SubmitJobs batches of 1,000 over gRPC; Huey: one enqueue",
                "  per task). watched: messages the watchers read; ended: watch streams the",
                "  server ended (RESOURCE_EXHAUSTED) and the dashboard resumed; caught up s:",
                "  last success to the dashboard holding every job's SUCCEEDED.",
            ],
        )
    )
    return report.finish(
        "throughput",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={
            "jobs": {"sqlite": args.jobs, "remote": args.remote_jobs},
            "workers": args.workers,
            "concurrency": args.concurrency,
            "huey_workers": args.huey_workers,
            "huey_type": args.huey_type,
            "watchers": watcher_modes,
        },
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
