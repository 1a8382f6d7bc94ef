"""Vacuum under churn: the PostgreSQL store's jobs and job_events tables with autovacuum
at PostgreSQL's defaults, with per-table thresholds tuned for them (`tuned`, the
settings docs/ops.md recommends), and with those and a higher cost limit (`tuned+cost`).

Each configuration gets a throwaway PostgreSQL 15 cluster of its own
(`tests.postgres.PostgresCluster`) with `autovacuum_naptime` shortened (the run lasts
minutes, not days) and pg_stat_statements loaded, and a store schema holding HISTORY
finished jobs with seven events each, their end times spread over the seven days of the
default `--retention` (the state a week of running leaves; vacuumed and analyzed, as a
steady state would be). Then, in-process through `PostgresJobStore`:

1. run: a producer submits JOBS jobs in batches, keeping at most BACKLOG pending, and
   WORKERS asyncio tasks act as workers: claim a batch, report progress PROGRESS times
   per job, complete the batch (seven events per job, as for a real job);
2. prune: the store's clock moves a day ahead, so the oldest seventh of the history
   falls out of retention, and `prune` runs batch after batch as the server's
   housekeeping does (PRUNE_BATCH jobs per transaction, a pause between);
3. after: the run goes on for JOBS / 5 more jobs, whose events land in whatever space
   the prune freed, if a vacuum has made it reusable.

Every SAMPLE seconds it reads pg_stat_user_tables, the relations' sizes and the claim
statement's row of pg_stat_statements (its server-side execution time and shared
buffers per call), and prints a side-by-side table of the two configurations at the end.

Run: `.venv/bin/python -m bench.pg_churn [--jobs N] [--history N] [--naptime 10s]
[--only defaults|tuned] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from jobcontrol.jobs import JobSpec, Progress
from jobcontrol.store.core import utc_now
from jobcontrol.store.postgres import PostgresJobStore
from jobcontrol.store.protocol import Completion
from jobcontrol.store.rows import to_us
from jobcontrol.store.schema import EVENT_LAYOUTS
from tests.postgres import PostgresCluster

JOB_TYPE = "bench.churn"
JOBS = 50_000
HISTORY = 100_000
PROGRESS = 5
WORKERS = 8
CLAIM_BATCH = 10
SUBMIT_BATCH = 200
BACKLOG = 2_000
SAMPLE = 5.0
NAPTIME = "10s"
RETENTION = timedelta(days=7)
# As the server's housekeeping (jobcontrol.server.housekeeping).
PRUNE_BATCH = 1000
PRUNE_PAUSE = 0.05
# How long to watch for autovacuum after the prune before running on.
AFTER_PRUNE_WINDOW = 30.0
LEASE = timedelta(minutes=10)
TABLES = ("jobs", "job_events")
INDEXES = ("jobs_claimable", "jobs_by_state", "job_events_by_job")

# When autovacuum comes to each table: a small fixed share of the table plus a floor,
# instead of PostgreSQL's 20% (vacuum) and 20% of inserts (insert-triggered vacuum).
TUNED: dict[str, dict[str, str]] = {
    "jobs": {
        "autovacuum_vacuum_scale_factor": "0.01",
        "autovacuum_vacuum_threshold": "1000",
        "autovacuum_vacuum_insert_scale_factor": "0.05",
    },
    "job_events": {
        "autovacuum_vacuum_scale_factor": "0.02",
        "autovacuum_vacuum_threshold": "10000",
        "autovacuum_vacuum_insert_scale_factor": "0.05",
        "autovacuum_vacuum_insert_threshold": "10000",
    },
}
# How fast each vacuum goes: five times PostgreSQL's 200 (vacuum_cost_limit).
COST = {"autovacuum_vacuum_cost_limit": "1000"}
# Per-table storage parameters; `defaults` sets none.
CONFIGS: dict[str, dict[str, dict[str, str]]] = {
    "defaults": {},
    "tuned": TUNED,
    "tuned+cost": {table: {**params, **COST} for table, params in TUNED.items()},
}

_EVENT_KINDS = ("SUBMITTED", "STARTED", *(["PROGRESS"] * PROGRESS), "SUCCEEDED")


def alter_statements(settings: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The ALTER TABLE statements that apply `settings`."""
    return [
        f"ALTER TABLE {table} SET ({', '.join(f'{k} = {v}' for k, v in params.items())})"
        for table, params in settings.items()
    ]


@dataclass
class Clock:
    """The store's clock: real time plus an offset the prune phase moves."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utc_now() + self.offset


@dataclass(frozen=True)
class Sample:
    """One reading of the server's counters, `at` seconds into the run."""

    at: float
    phase: str
    done: int
    tables: dict[str, dict[str, int]]
    sizes: dict[str, int]
    claim_calls: int
    claim_ms: float
    claim_blocks: int
    probe_ms: float
    probe_blocks: int
    probe_index: str


@dataclass
class Result:
    config: str
    settings: dict[str, dict[str, str]]
    naptime: str
    jobs: int
    history: int
    run_seconds: float = 0.0
    after_seconds: float = 0.0
    prune_seconds: float = 0.0
    pruned_jobs: int = 0
    pruned_events: int = 0
    vacuum_after_prune_s: float | None = None
    claim_client_ms: dict[str, float] = field(default_factory=dict)
    vacuums: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


# ---- the cluster and its history -------------------------------------------------------


def start_cluster(naptime: str) -> PostgresCluster:
    """A fresh cluster with pg_stat_statements (a restart loads it) and the naptime."""
    cluster = PostgresCluster().start()
    with cluster.connect() as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        conn.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{naptime}'")
        conn.execute("ALTER SYSTEM SET log_autovacuum_min_duration = 0")
    cluster.restart()
    return cluster


def fill_history(url: str, history: int, settings: Mapping[str, Mapping[str, str]]) -> None:
    """HISTORY finished jobs ending over the last seven days, seven events each, written
    without the trigger (for speed) in the trigger's layout; then the configuration's
    settings, a VACUUM ANALYZE as a steady state would have had, and zeroed statement
    statistics."""
    now_us = to_us(utc_now())
    span_us = RETENTION // timedelta(microseconds=1)
    layout = "json_build_array(1, " + ", ".join(f"j.{c}" for c in EVENT_LAYOUTS[1]) + ")"
    kinds = ", ".join(f"({n}, '{kind}')" for n, kind in enumerate(_EVENT_KINDS))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with conn.transaction():
            conn.execute("ALTER TABLE jobs DISABLE TRIGGER job_events_append_inserted")
            conn.execute(
                """
                INSERT INTO jobs (id, type, payload, state, priority, labels, attempt,
                    max_attempts, create_us, update_us, run_after_us, progress_percent,
                    progress_stage, progress_message, result, cancel_requested,
                    cancel_reason, worker_id, lease_id, start_us, end_us, version, event_kind)
                SELECT gen_random_uuid()::text, %(type)s,
                    json_build_object('index', i, 'input', 's3://bench/input-' || i)::text,
                    'SUCCEEDED', 0, '{}', 1, 3, e - 3000000, e, e - 3000000, 100, 'done', '',
                    '{"ok": true}', 0, '', 'history-worker', md5(i::text), e - 2000000, e,
                    8, 'SUCCEEDED'
                FROM (SELECT i, %(start)s::bigint + i * (%(span)s::bigint / %(n)s) AS e
                      FROM generate_series(1, %(n)s) AS i) AS s
                """,
                {"type": JOB_TYPE, "start": now_us - span_us, "span": span_us, "n": history},
            )
            conn.execute(
                f"""
                INSERT INTO job_events (job_id, kind, time_us, job)
                SELECT j.id, k.kind, j.end_us - (7 - k.n) * 100000, {layout}::text
                FROM jobs AS j CROSS JOIN (VALUES {kinds}) AS k(n, kind)
                ORDER BY j.end_us, k.n
                """
            )
            conn.execute("ALTER TABLE jobs ENABLE TRIGGER job_events_append_inserted")
        for statement in alter_statements(settings):
            conn.execute(statement)
        conn.execute("VACUUM (ANALYZE) jobs, job_events")
        conn.execute("SELECT pg_stat_statements_reset()")


# ---- reading the server ---------------------------------------------------------------

_TABLE_STATS = """
SELECT relname, n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
       autovacuum_count, autoanalyze_count
FROM pg_stat_user_tables WHERE relname = ANY(%s)
"""
_CLAIM_STATS = """
SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0),
       coalesce(sum(shared_blks_hit + shared_blks_read), 0)
FROM pg_stat_statements
WHERE query LIKE '%%FOR UPDATE SKIP LOCKED%%'
  AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


# The claim's search alone (its CTE without FOR UPDATE, so it takes no locks), run under
# EXPLAIN: the buffers it touches to find CLAIM_BATCH pending jobs, whatever the rows
# locked and updated afterwards cost.
_PROBE = """
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT id FROM jobs
WHERE state = 'PENDING' AND type IN ('{type}') AND run_after_us <= {now_us}
ORDER BY priority DESC, run_after_us, create_us, id
LIMIT {limit}
"""


def _index_names(plan: Mapping[str, Any]) -> list[str]:
    names = [plan["Index Name"]] if "Index Name" in plan else []
    for child in plan.get("Plans", []):
        names += _index_names(child)
    return names


def read_sample(conn: psycopg.Connection[Any], at: float, phase: str, done: int) -> Sample:
    tables = {
        row[0]: dict(
            zip(
                (
                    "live",
                    "dead",
                    "ins",
                    "upd",
                    "hot_upd",
                    "del",
                    "autovacuum",
                    "autoanalyze",
                ),
                (int(v) for v in row[1:]),
                strict=True,
            )
        )
        for row in conn.execute(_TABLE_STATS, (list(TABLES),)).fetchall()
    }
    sizes: dict[str, int] = {}
    for table in TABLES:
        row = conn.execute(
            "SELECT pg_total_relation_size(%s), pg_relation_size(%s), pg_indexes_size(%s)",
            (table, table, table),
        ).fetchone()
        assert row is not None
        sizes[f"{table}.total"], sizes[f"{table}.heap"], sizes[f"{table}.indexes"] = row
    for index in INDEXES:
        row = conn.execute("SELECT pg_relation_size(%s)", (index,)).fetchone()
        assert row is not None
        sizes[index] = int(row[0])
    claim = conn.execute(_CLAIM_STATS).fetchone()
    assert claim is not None
    probe = _PROBE.format(type=JOB_TYPE, now_us=to_us(utc_now()), limit=CLAIM_BATCH)
    row = conn.execute(probe).fetchone()
    assert row is not None
    (explained,) = row[0]
    plan = explained["Plan"]
    return Sample(
        at=at,
        phase=phase,
        done=done,
        tables=tables,
        sizes=sizes,
        claim_calls=int(claim[0]),
        claim_ms=float(claim[1]),
        claim_blocks=int(claim[2]),
        probe_ms=float(explained["Execution Time"]),
        probe_blocks=int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"]),
        probe_index=",".join(_index_names(plan)) or plan["Node Type"],
    )


# ---- the run ---------------------------------------------------------------------------


@dataclass
class Load:
    """Shared counters of one phase of jobs through the store."""

    total: int
    submitted: int = 0
    done: int = 0
    claims: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)


async def produce(store: PostgresJobStore, load: Load) -> None:
    while load.submitted < load.total:
        if load.submitted - load.done >= BACKLOG:
            await asyncio.sleep(0.01)
            continue
        size = min(SUBMIT_BATCH, load.total - load.submitted)
        start = load.submitted
        load.submitted += size
        await store.create_jobs(
            [
                JobSpec(type=JOB_TYPE, payload={"index": start + i, "input": f"s3://bench/{i}"})
                for i in range(size)
            ]
        )


async def work(store: PostgresJobStore, load: Load, name: str, started: float) -> None:
    while load.done < load.total:
        begin = time.perf_counter()
        claimed = await store.claim_jobs(
            worker_id=name, types=[JOB_TYPE], limit=CLAIM_BATCH, lease_timeout=LEASE
        )
        load.claims.append((begin - started, time.perf_counter() - begin))
        if not claimed:
            await asyncio.sleep(0.01)
            continue
        for job in claimed:
            assert job.lease_id is not None
            for step in range(1, PROGRESS + 1):
                await store.report_progress(
                    job_id=job.id,
                    lease_id=job.lease_id,
                    progress=Progress(
                        percent=100 * step / (PROGRESS + 1),
                        stage="working",
                        message=f"step {step} of {PROGRESS}",
                    ),
                )
        completions = [
            Completion(job.id, job.lease_id or "", {"ok": True, "output": f"s3://out/{job.id}"})
            for job in claimed
        ]
        recorded = await store.complete_jobs(completions)
        if not all(recorded):
            raise RuntimeError(f"{name}: a completion was refused (lease lost)")
        load.done += len(claimed)


async def run_load(store: PostgresJobStore, total: int, started: float) -> Load:
    load = Load(total)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(produce(store, load))
        for n in range(WORKERS):
            tasks.create_task(work(store, load, f"worker-{n}", started))
    return load


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True)


async def sample_every(
    url: str, result: Result, started: float, state: dict[str, Any], stop: asyncio.Event
) -> None:
    with await asyncio.to_thread(_connect, url) as conn:
        while True:
            load: Load | None = state.get("load")
            done = state["base"] + (load.done if load else 0)
            sample = await asyncio.to_thread(
                read_sample, conn, time.perf_counter() - started, state["phase"], done
            )
            result.samples.append(sample)
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE)
                break
            except TimeoutError:
                pass
        result.samples.append(
            read_sample(conn, time.perf_counter() - started, "end", state["base"])
        )


async def run_config(name: str, args: argparse.Namespace) -> Result:
    settings = CONFIGS[name]
    result = Result(name, settings, args.naptime, args.jobs, args.history)
    cluster = start_cluster(args.naptime)
    try:
        url = cluster.create_database("churn")
        clock = Clock()
        store = await PostgresJobStore.open(url, clock=clock, pool_size=WORKERS)
        try:
            print(f"[{name}] filling {args.history:,} finished jobs of history", file=sys.stderr)
            fill_history(url, args.history, settings)
            started = time.perf_counter()
            state: dict[str, Any] = {"phase": "run", "base": 0, "load": None}
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_every(url, result, started, state, stop))

            print(f"[{name}] running {args.jobs:,} jobs", file=sys.stderr)
            state["load"] = Load(args.jobs)
            load = await run_load(store, args.jobs, started)
            result.run_seconds = time.perf_counter() - started
            result.claim_client_ms = claim_quartiles(load, result.run_seconds)
            state.update(phase="prune", base=args.jobs, load=None)

            print(f"[{name}] pruning a day of history", file=sys.stderr)
            clock.offset = timedelta(days=1)
            prune_start = time.perf_counter()
            while True:
                pruned = await store.prune(older_than=RETENTION, limit=PRUNE_BATCH)
                result.pruned_jobs += pruned.jobs
                result.pruned_events += pruned.events
                if pruned.jobs < PRUNE_BATCH:
                    break
                await asyncio.sleep(PRUNE_PAUSE)
            result.prune_seconds = time.perf_counter() - prune_start
            clock.offset = timedelta(0)
            state["phase"] = "after prune"
            result.vacuum_after_prune_s = await wait_for_vacuum(url, prune_start)

            after = args.jobs // 5
            print(f"[{name}] running {after:,} more jobs", file=sys.stderr)
            after_start = time.perf_counter()
            state.update(phase="after", load=Load(after))
            await run_load(store, after, started)
            result.after_seconds = time.perf_counter() - after_start
            state.update(base=args.jobs + after, load=None)
            stop.set()
            await sampler
        finally:
            await store.close()
        result.vacuums = autovacuums(cluster.log)
    finally:
        cluster.remove()
    return result


_VACUUM = re.compile(
    r'automatic vacuum of table "[^"]*\.public\.(?P<table>\w+)".*?'
    r"tuples: (?P<removed>\d+) removed.*?elapsed: (?P<elapsed>[\d.]+) s",
    re.S,
)


def autovacuums(log: str) -> dict[str, list[tuple[int, float]]]:
    """Each autovacuum the server logged (log_autovacuum_min_duration = 0), by table:
    (dead tuples removed, seconds it took)."""
    found: dict[str, list[tuple[int, float]]] = {}
    for m in _VACUUM.finditer(log):
        found.setdefault(m["table"], []).append((int(m["removed"]), float(m["elapsed"])))
    return found


def wait_for_vacuum(url: str, since: float) -> asyncio.Future[float | None]:
    """Seconds from the prune's start to job_events' next autovacuum, None if none came
    within AFTER_PRUNE_WINDOW of the prune's end (the run then goes on regardless)."""

    def watch() -> float | None:
        query = "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'job_events'"
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
            assert row is not None
            before = row[0]
            deadline = time.perf_counter() + AFTER_PRUNE_WINDOW
            while time.perf_counter() < deadline:
                row = conn.execute(query).fetchone()
                assert row is not None
                if row[0] > before:
                    return time.perf_counter() - since
                time.sleep(0.5)  # polling the counter: measuring, not synchronising
        return None

    return asyncio.ensure_future(asyncio.to_thread(watch))


def claim_quartiles(load: Load, seconds: float) -> dict[str, float]:
    """Median claim_jobs round trip (client side) in the run's first and last quarter."""
    early = [d for at, d in load.claims if at < seconds / 4]
    late = [d for at, d in load.claims if at > 3 * seconds / 4]
    return {
        "early_ms": 1000 * statistics.median(early) if early else float("nan"),
        "late_ms": 1000 * statistics.median(late) if late else float("nan"),
    }


# ---- the report ------------------------------------------------------------------------


def _window(samples: Sequence[Sample], start: float, end: float) -> tuple[float, float]:
    """The claim's mean server time (ms) and shared buffers per call between two times."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2 or inside[-1].claim_calls == inside[0].claim_calls:
        return float("nan"), float("nan")
    calls = inside[-1].claim_calls - inside[0].claim_calls
    return (
        (inside[-1].claim_ms - inside[0].claim_ms) / calls,
        (inside[-1].claim_blocks - inside[0].claim_blocks) / calls,
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if abs(n) >= 2**20 else f"{n / 2**10:,.0f} KiB"


def rows_of(result: Result) -> dict[str, str]:
    samples = result.samples
    first, last = samples[0], samples[-1]
    run = [s for s in samples if s.phase == "run"]
    run_end = run[-1] if run else last
    out: dict[str, str] = {}
    out["throughput (run)"] = f"{result.jobs / result.run_seconds:,.0f} jobs/s"
    out["run time"] = f"{result.run_seconds:,.0f} s"
    early_ms, early_blocks = _window(samples, 0, result.run_seconds / 4)
    late_ms, late_blocks = _window(samples, 3 * result.run_seconds / 4, result.run_seconds + 1)
    peak = max(
        (
            _window(samples, a.at, b.at)[1]
            for a, b in itertools.pairwise(run)
            if b.claim_calls > a.claim_calls
        ),
        default=float("nan"),
    )
    out["claim: server ms/call, first 1/4"] = f"{early_ms:.2f}"
    out["claim: server ms/call, last 1/4"] = f"{late_ms:.2f}"
    out["claim: buffers/call, first 1/4"] = f"{early_blocks:,.0f}"
    out["claim: buffers/call, last 1/4"] = f"{late_blocks:,.0f}"
    out["claim: buffers/call, worst 5 s"] = f"{peak:,.0f}"
    quarter = result.run_seconds / 4
    early_probe = [s for s in run if s.at < quarter]
    late_probe = [s for s in run if s.at > 3 * quarter]
    for label, probes in (("first 1/4", early_probe), ("last 1/4", late_probe)):
        out[f"claim search: buffers, {label}"] = (
            f"{statistics.mean(s.probe_blocks for s in probes):,.0f}" if probes else "-"
        )
    out["claim search: buffers, worst"] = f"{max(s.probe_blocks for s in run):,}"
    for label, probes in (("first 1/4", early_probe), ("last 1/4", late_probe)):
        out[f"claim search: ms, {label}"] = (
            f"{statistics.mean(s.probe_ms for s in probes):.2f}" if probes else "-"
        )
    out["claim search: index"] = ", ".join(sorted({s.probe_index for s in run}))
    out["claim: client median ms, first 1/4"] = f"{result.claim_client_ms['early_ms']:.1f}"
    out["claim: client median ms, last 1/4"] = f"{result.claim_client_ms['late_ms']:.1f}"
    for table in TABLES:
        a, b = first.tables[table], run_end.tables[table]
        upd = b["upd"] - a["upd"]
        if table == "jobs":
            share = (b["hot_upd"] - a["hot_upd"]) / upd if upd else float("nan")
            out["jobs: HOT share of updates (run)"] = f"{share:.1%}"
        out[f"{table}: autovacuums (run)"] = str(b["autovacuum"] - a["autovacuum"])
        if table == "jobs":
            out["jobs: max n_dead_tup (run)"] = f"{max(s.tables[table]['dead'] for s in run):,}"
        out[f"{table}: n_dead_tup end of run"] = f"{b['dead']:,}"
        out[f"{table}: size end of run"] = _mib(run_end.sizes[f"{table}.total"])
    out["jobs_claimable: max size (run)"] = _mib(max(s.sizes["jobs_claimable"] for s in run))
    out["prune: jobs, events deleted"] = f"{result.pruned_jobs:,}, {result.pruned_events:,}"
    out["prune: time"] = f"{result.prune_seconds:.1f} s"
    vacuum = result.vacuum_after_prune_s
    out["job_events: autovacuum after prune"] = (
        f"after {vacuum:.0f} s" if vacuum is not None else f"none in {AFTER_PRUNE_WINDOW:.0f} s"
    )
    pruned = [s for s in samples if s.phase == "after prune"]
    if pruned:
        most = max(s.tables["job_events"]["dead"] for s in pruned)
        out["job_events: max n_dead_tup after prune"] = f"{most:,}"
    after = [s for s in samples if s.phase == "after"] or [last]
    out["job_events: heap growth, after phase"] = _mib(
        last.sizes["job_events.heap"] - (pruned or after)[0].sizes["job_events.heap"]
    )
    for table in TABLES:
        runs = result.vacuums.get(table, [])
        out[f"{table}: autovacuum time, dead removed"] = (
            f"{sum(e for _, e in runs):.1f} s, {sum(r for r, _ in runs):,}"
        )
    for table in TABLES:
        out[f"{table}: n_dead_tup at end"] = f"{last.tables[table]['dead']:,}"
        out[f"{table}: size at end (heap + indexes)"] = (
            f"{_mib(last.sizes[f'{table}.heap'])} + {_mib(last.sizes[f'{table}.indexes'])}"
        )
        out[f"{table}: autovacuums (whole)"] = str(
            last.tables[table]["autovacuum"] - first.tables[table]["autovacuum"]
        )
    return out


def print_table(results: Sequence[Result]) -> None:
    rows = [rows_of(r) for r in results]
    names = list(rows[0])
    width = max(len(n) for n in names)
    cols = [
        max(len(r.config), *(len(row[n]) for n in names))
        for r, row in zip(results, rows, strict=True)
    ]
    print(
        f"{'':{width}}  "
        + "  ".join(f"{r.config:>{c}}" for r, c in zip(results, cols, strict=True))
    )
    for n in names:
        print(
            f"{n:{width}}  "
            + "  ".join(f"{row[n]:>{c}}" for row, c in zip(rows, cols, strict=True))
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--history", type=int, default=HISTORY)
    parser.add_argument("--naptime", default=NAPTIME, help="autovacuum_naptime (e.g. 10s, 1min)")
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args(argv)
    results = [asyncio.run(run_config(name, args)) for name in args.only or list(CONFIGS)]
    print(
        f"\nautovacuum_naptime = {args.naptime}; {args.history:,} jobs of history, "
        f"{args.jobs:,} jobs run by {WORKERS} workers, {PROGRESS} progress reports each\n"
    )
    print_table(results)
    for result in results:
        for statement in alter_statements(result.settings):
            print(f"{result.config}: {statement};")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
