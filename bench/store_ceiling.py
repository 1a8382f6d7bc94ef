"""The store's ceiling: claim+complete pairs per second through the JobStore API, against
raw sqlite3 running the same claim statement and a plain UPDATE to SUCCEEDED.

One process, one connection, one job at a time (claim limit 1, then complete it), on a
SQLite file (WAL, synchronous=NORMAL, as the store opens it) pre-filled with PREFILL
pending jobs; each variant works on an identical copy:

- store API: `claim_jobs(limit=1)` then `complete_job` (each a transaction, run on the
  event loop's thread while the driver thread is idle; the completion is one fenced
  UPDATE, `sql.COMPLETE_JOB`, whose returned row is decoded into a Job; the trigger
  appends the event with the job as a JSON array);
- raw, with the event triggers: `sql.CLAIM_JOBS` then an UPDATE of the finishing
  columns (state, result, end/update time, progress, version) by id and lease, each in
  its own BEGIN IMMEDIATE ... COMMIT, straight from this thread; the event triggers
  still write job_events;
- raw, no event feed: the same on a copy whose triggers were dropped: what SQLite
  itself can do with these statements (the baseline of the goal).

The three take turns, SLICE pairs each, in a rotating order, so a burst of load from
another process slows all three alike: on a shared machine, running each variant's
pairs in one go made the ratio swing by 2x from run to run.

Run: `.venv/bin/python -m bench.store_ceiling [--runs N] [--pairs N]`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bench import backends, report
from bench.report import Headline
from bench.stats import Figures
from jobcontrol.jobs import JobSpec
from jobcontrol.store import StoreConfig, open_store
from jobcontrol.store.protocol import MAX_BATCH_SIZE
from jobcontrol.store.sql import sqlite as sql

PAIRS = 2_000
PREFILL = 2_500
SLICE = 50
JOB_TYPE = "demo.sleep"
LEASE = timedelta(minutes=10)
GOAL_SHARE = 0.5
VARIANTS = {
    "store": "store API (claim_jobs + complete_job)",
    "raw_events": "raw sqlite3, same statements, event triggers on",
    "raw": "raw sqlite3, same statements, no event feed",
}

COMPLETE = """
UPDATE jobs SET state = 'SUCCEEDED', result = :result, end_us = :now_us, update_us = :now_us,
    progress_percent = 100, version = version + 1, event_kind = 'SUCCEEDED'
WHERE id = :id AND lease_id = :lease_id AND state = 'RUNNING'
"""


async def prefill(path: Path) -> None:
    store = await open_store(StoreConfig(backend="local", path=str(path)))
    try:
        for start in range(0, PREFILL, MAX_BATCH_SIZE):
            size = min(MAX_BATCH_SIZE, PREFILL - start)
            await store.create_jobs(
                [JobSpec(type=JOB_TYPE, payload={"index": start + i}) for i in range(size)]
            )
    finally:
        await store.close()


class StoreVariant:
    """Claims and completes through the JobStore API, on a loop kept across slices."""

    def __init__(self, path: Path) -> None:
        self._runner = asyncio.Runner()
        self._store = self._runner.run(open_store(StoreConfig(backend="local", path=str(path))))

    def pairs(self, count: int) -> float:
        return self._runner.run(self._pairs(count))

    async def _pairs(self, count: int) -> float:
        store = self._store
        began = time.perf_counter()
        for _ in range(count):
            (job,) = await store.claim_jobs(
                worker_id="bench", types=[JOB_TYPE], limit=1, lease_timeout=LEASE
            )
            assert job.lease_id is not None
            await store.complete_job(job_id=job.id, lease_id=job.lease_id, result={"ok": True})
        return time.perf_counter() - began

    def close(self) -> None:
        try:
            self._runner.run(self._store.close())
        finally:
            self._runner.close()


class RawVariant:
    """The same claims and completions straight through sqlite3."""

    def __init__(self, path: Path, *, events: bool) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        if not events:
            self._conn.execute("DROP TRIGGER job_events_on_insert")
            self._conn.execute("DROP TRIGGER job_events_on_update")
        self._types = json.dumps([JOB_TYPE])
        self._result = json.dumps({"ok": True})
        self._lease_us = LEASE // timedelta(microseconds=1)

    def pairs(self, count: int) -> float:
        conn = self._conn
        began = time.perf_counter()
        for _ in range(count):
            now_us = time.time_ns() // 1000
            conn.execute("BEGIN IMMEDIATE")
            (row,) = conn.execute(
                sql.CLAIM_JOBS,
                {
                    "worker_id": "bench",
                    "types": self._types,
                    "limit": 1,
                    "now_us": now_us,
                    "lease_expire_us": now_us + self._lease_us,
                },
            ).fetchall()
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                COMPLETE,
                {
                    "id": row["id"],
                    "lease_id": row["lease_id"],
                    "result": self._result,
                    "now_us": time.time_ns() // 1000,
                },
            )
            conn.execute("COMMIT")
        return time.perf_counter() - began

    def close(self) -> None:
        self._conn.close()


def one_run(directory: Path, template: Path, pairs: int) -> dict[str, float]:
    variants: dict[str, StoreVariant | RawVariant] = {}
    try:
        for name in VARIANTS:
            path = directory / f"{name}.db"
            backends.copy_database(template, path)
            variants[name] = (
                StoreVariant(path)
                if name == "store"
                else RawVariant(path, events=name == "raw_events")
            )
        spent = dict.fromkeys(VARIANTS, 0.0)
        order = list(VARIANTS)
        for start in range(0, pairs, SLICE):
            for name in order:
                spent[name] += variants[name].pairs(min(SLICE, pairs - start))
            order.append(order.pop(0))
    finally:
        for variant in variants.values():
            variant.close()
    found = {name: pairs / seconds for name, seconds in spent.items()}
    found["store_share_of_raw"] = found["store"] / found["raw"]
    found["store_share_of_raw_events"] = found["store"] / found["raw_events"]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("store_ceiling", __doc__)
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"default {PAIRS}")
    args = parser.parse_args(argv)
    if not 1 <= args.pairs <= PREFILL:
        parser.error(f"--pairs must be between 1 and {PREFILL}")
    began = time.perf_counter()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as tmp:
        template = Path(tmp) / "template.db"
        asyncio.run(prefill(template))
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(dir=tmp) as directory:
                found = one_run(Path(directory), template, args.pairs)
            figures.add_all(found)
            print(
                f"sqlite run {run}/{args.runs}: "
                + ", ".join(f"{v} {found[v]:,.0f}/s" for v in VARIANTS),
                flush=True,
            )
    elapsed = time.perf_counter() - began
    rows = [
        (
            description,
            figures[variant].cell(),
            f"{figures[variant].median / figures['raw'].median:.0%}",
        )
        for variant, description in VARIANTS.items()
    ]
    print(
        report.table(
            f"Store ceiling: claim+complete pairs per second, one connection, median of "
            f"{args.runs} runs (min-max)",
            ("variant", "pairs/s", "of raw"),
            rows,
            notes=[
                f"{args.pairs:,} pairs per run (claim limit 1), the variants taking turns "
                f"{SLICE} pairs at a time; {PREFILL:,} jobs pre-filled; "
                f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=NORMAL;",
                "store/raw measured in the same run: "
                f"{figures['store_share_of_raw'].cell(2)} of raw, "
                f"{figures['store_share_of_raw_events'].cell(2)} of raw with triggers.",
            ],
        )
    )
    share = figures["store_share_of_raw"]
    headlines = [
        Headline.of("store ceiling", "claim+complete via store API", "sqlite",
                    figures["store"], "pairs/s"),
        Headline.of("store ceiling", "raw sqlite3, no event feed", "sqlite",
                    figures["raw"], "pairs/s"),
        Headline.of(
            "store ceiling", "store API / raw", "sqlite", share, "x", digits=2,
            goal=f">= {GOAL_SHARE:.2f}", met=share.median >= GOAL_SHARE,
        ),
    ]  # fmt: skip
    return report.finish(
        "store_ceiling",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={"pairs": args.pairs, "prefill": PREFILL, "claim_limit": 1, "slice": SLICE},
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
