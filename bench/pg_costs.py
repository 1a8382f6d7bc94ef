"""What a PostgreSQL store call costs, by two choices of its driver, on a real PostgreSQL.

- `driver`: the same statement through psycopg's synchronous pool, each call handed to
  a thread (`run_in_executor`, as the store did before), against psycopg's asyncio pool
  awaited on the event loop (as it does now). One row and 64 rows, one caller and four
  at once; the figures are wall time and this process's CPU time per call.
- `triggers`: the store's own operations on databases migrated up to each of
  `--versions` (default 7, 9 and the newest): 7 has the event trigger of migration 6
  (per row: an advisory-lock call, an insert and a notify), 8 and 9 the statement
  triggers reading transition tables, 11 joins their old and new rows by hash, 12 has
  two fewer indexes of running jobs. The one-row calls come first, as in a worker's
  session (idle claims before batches), since plpgsql plans a trigger's statements
  when it first fires in a session. Wall time per call and the database backends' CPU
  time per call, read from /proc (so this must run on the database's machine).

Each part runs its variants alternately, `--runs` times, in one throwaway PostgreSQL 15
cluster (`tests.postgres.PostgresCluster`), and prints medians.

Run: `.venv/bin/python -m bench.pg_costs [--runs N] [--part driver|triggers|both]
[--versions 7,9,12]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg_pool
from psycopg.rows import dict_row

from bench import report
from jobcontrol.jobs import Job, JobSpec, Progress
from jobcontrol.store.postgres import PostgresJobStore
from jobcontrol.store.protocol import Completion
from jobcontrol.store.sql import postgres as postgres_sql
from tests.postgres import PostgresCluster

ROWS_QUERY = (
    "SELECT g AS id, md5(g::text) AS a, g * 2 AS b, 'x' AS c, now() AS d"
    " FROM generate_series(1, %(n)s) AS g"
)
DRIVER_CALLS = 2000
LEASE = timedelta(minutes=10)
Figures = dict[str, tuple[float, float]]  # name -> (wall us, cpu us) per call


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def driver_run(url: str) -> Figures:
    pool = psycopg_pool.ConnectionPool(url, min_size=4, max_size=8, kwargs={"autocommit": True})
    executor = ThreadPoolExecutor(8)
    apool = psycopg_pool.AsyncConnectionPool(
        url, min_size=4, max_size=8, kwargs={"autocommit": True}, open=False
    )
    await apool.open()
    loop = asyncio.get_running_loop()

    def blocking(n: int) -> list[dict[str, Any]]:
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(ROWS_QUERY, {"n": n})
            return cursor.fetchall()

    async def in_thread(n: int) -> list[dict[str, Any]]:
        return await loop.run_in_executor(executor, blocking, n)

    async def on_loop(n: int) -> list[dict[str, Any]]:
        async with apool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(ROWS_QUERY, {"n": n})
            return await cursor.fetchall()

    found: Figures = {}
    try:
        for rows in (1, 64):
            for callers in (1, 4):
                for name, call in (("a thread per call", in_thread), ("event loop", on_loop)):

                    async def caller(
                        calls: int, call: Callable[[int], Awaitable[Any]], rows: int = rows
                    ) -> None:
                        for _ in range(calls):
                            await call(rows)

                    cpu, started = _own_cpu(), time.perf_counter()
                    await asyncio.gather(
                        *(caller(DRIVER_CALLS // callers, call) for _ in range(callers))
                    )
                    wall = (time.perf_counter() - started) / DRIVER_CALLS
                    key = f"{rows} row{'s' if rows > 1 else ''}, {callers} at once|{name}"
                    found[key] = (1e6 * wall, 1e6 * (_own_cpu() - cpu) / DRIVER_CALLS)
    finally:
        pool.close()
        executor.shutdown()
        await apool.close()
    return found


def _lease(job: Job) -> tuple[str, str]:
    assert job.lease_id is not None  # a claimed job
    return job.id, job.lease_id


def backends_cpu(cluster: PostgresCluster, dbname: str) -> float:
    """CPU seconds of the backends connected to `dbname`, from /proc."""
    pids = cluster.psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{dbname}'")
    total = 0
    for pid in pids.split():
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def triggers_run(cluster: PostgresCluster, dbname: str, through: int) -> Figures:
    """The store's operations on a database migrated up to `through`."""
    url = cluster.create_database(dbname)
    every = postgres_sql.MIGRATIONS
    postgres_sql.MIGRATIONS = tuple(m for m in every if m.version <= through)
    try:
        store = await PostgresJobStore.open(url)
    finally:
        postgres_sql.MIGRATIONS = every
    found: Figures = {}

    async def timed(name: str, calls: int, body: Callable[[], Awaitable[None]]) -> None:
        cpu, started = backends_cpu(cluster, dbname), time.perf_counter()
        await body()
        wall = (time.perf_counter() - started) / calls
        found[name] = (1e6 * wall, 1e6 * (backends_cpu(cluster, dbname) - cpu) / calls)

    claimed: list[Job] = []
    one: list[Job] = []

    async def submit() -> None:
        for _ in range(20):
            await store.create_jobs([JobSpec(type="t", payload={"n": n}) for n in range(1000)])

    async def claim_64() -> None:
        for _ in range(100):
            claimed.extend(
                await store.claim_jobs(worker_id="w", types=["t"], limit=64, lease_timeout=LEASE)
            )

    async def complete_64() -> None:
        for start in range(0, len(claimed), 64):
            batch = claimed[start : start + 64]
            await store.complete_jobs([Completion(*_lease(job), {}) for job in batch])

    async def claim_1() -> None:
        for _ in range(1000):
            one.extend(
                await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
            )

    async def progress() -> None:
        for n in range(1000):
            job_id, lease_id = _lease(one[n % 50])
            update = Progress(percent=n % 100, stage="s", message="m")
            await store.report_progress(job_id=job_id, lease_id=lease_id, progress=update)

    async def heartbeat() -> None:
        for n in range(1000):
            job_id, lease_id = _lease(one[n % 50])
            await store.heartbeat_jobs({job_id: lease_id}, lease_timeout=LEASE)

    async def cancel() -> None:
        for job in one[100:600]:
            await store.cancel_job(job.id)

    try:
        await timed("submit, per job (batches of 1,000)", 20_000, submit)
        await timed("claim of 1", 1000, claim_1)
        await timed("report_progress", 1000, progress)
        await timed("heartbeat of 1 job (no event)", 1000, heartbeat)
        await timed("cancel_job of a running job", 500, cancel)
        await timed("claim of 64, per job", 6400, claim_64)
        await timed("complete of 64, per job", 6400, complete_64)
    finally:
        await store.close()
    return found


def _table(title: str, runs: Sequence[Figures], variants: Sequence[str], what: str) -> str:
    names = list(dict.fromkeys(key.split("|")[0] if "|" in key else key for key in runs[0]))

    def cell(name: str, variant: str) -> str:
        key = f"{name}|{variant}" if f"{name}|{variant}" in runs[0] else name
        wall = statistics.median(run[key][0] for run in runs if key in run)
        cpu = statistics.median(run[key][1] for run in runs if key in run)
        return f"{wall:,.0f} / {cpu:,.0f}"

    return report.table(
        title,
        ("call", *(f"{v}: wall / {what} us" for v in variants)),
        [(name, *(cell(name, v) for v in variants)) for name in names],
        notes=[f"median of {len(runs)} runs; us per call (per job where it says so)."],
    )


def _versions(text: str) -> list[int]:
    known = {m.version for m in postgres_sql.MIGRATIONS}
    try:
        versions = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if unknown := [v for v in versions if v not in known]:
        raise argparse.ArgumentTypeError(
            f"no PostgreSQL migration {unknown}; known: {sorted(known)}"
        )
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_costs", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=("driver", "triggers", "both"), default="both")
    newest = postgres_sql.MIGRATIONS[-1].version
    parser.add_argument(
        "--versions",
        type=_versions,
        default=f"7,9,{newest}",
        help="schema versions the triggers part compares (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    versions: list[int] = args.versions
    with PostgresCluster() as cluster:
        if args.part in ("driver", "both"):
            runs = [asyncio.run(driver_run(cluster.url())) for _ in range(args.runs)]
            print(
                _table(
                    "One statement through psycopg: a thread per call, or awaited on the loop",
                    runs,
                    ("a thread per call", "event loop"),
                    "this process's CPU",
                )
            )
        if args.part in ("triggers", "both"):
            variants = [f"migrated to {v}" for v in versions]
            merged: list[Figures] = []
            for run in range(args.runs):
                figures: Figures = {}
                for version, variant in zip(versions, variants, strict=True):
                    found = asyncio.run(triggers_run(cluster, f"m{version}_{run}", version))
                    figures.update({f"{k}|{variant}": v for k, v in found.items()})
                merged.append(figures)
            print(
                _table(
                    "Store calls on PostgreSQL, by schema version",
                    merged,
                    variants,
                    "backends' CPU",
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
