"""`jobcontrol-worker` with its store calls counted: `python -m bench.counted_worker`
takes the worker's flags, and serves `jobcontrol_store_calls_total` on /metrics at
BENCH_METRICS_LISTEN (host:port).

It is the worker's own entry point (`jobcontrol.worker.cli.main`) with the store it
opens wrapped by the server's counting wrapper (`jobcontrol.server.metrics.metered`),
so the calls counted are exactly those the worker makes; nothing else changes.
"""

from __future__ import annotations

import os
from typing import Any

from jobcontrol.server.metrics import Metrics, metered
from jobcontrol.store import JobStore, StoreConfig
from jobcontrol.worker import cli


def main() -> int:
    metrics = Metrics()
    metrics.serve(os.environ["BENCH_METRICS_LISTEN"])
    open_store = cli.open_writable_store  # type: ignore[attr-defined]

    async def open_counted(config: StoreConfig, **options: Any) -> JobStore:
        return metered(await open_store(config, **options), metrics)

    cli.open_writable_store = open_counted  # type: ignore[attr-defined]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
