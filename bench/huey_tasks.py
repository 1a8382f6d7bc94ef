"""The Huey side of the throughput comparison: a SqliteHuey instance and one no-op task.

The consumer imports this module (`huey_consumer bench.huey_tasks.huey`), so the
database file and whether results are stored come from the environment the benchmark
sets: BENCH_HUEY_DB and BENCH_HUEY_RESULTS ("1" or "0").
"""

from __future__ import annotations

import os
import time

from huey import SqliteHuey

huey = SqliteHuey(
    "bench",
    filename=os.environ.get("BENCH_HUEY_DB", ":memory:"),
    results=os.environ.get("BENCH_HUEY_RESULTS", "0") == "1",
)


@huey.task()
def noop() -> float:
    """Nothing, like demo.sleep with seconds 0; the finish time is the result (if kept)."""
    return time.time()
