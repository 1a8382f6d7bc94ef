"""A handler module for the cluster benchmark (`--handlers bench.cluster_handlers`).

`bench.progress_probe` reports progress `updates` times after waiting `after` seconds
(time for the benchmark to open its watchers), each `spacing` to 1.5 x `spacing` seconds
after the one before (at random, so that updates fall at every phase of a server's
event tail, and probes running together do not report in step); each update's message
is the time.time() taken just before `report_progress`. The spacing is above the
runtime's progress throttle (4 writes a second), so each update is written at once, and
the message is when the worker's write started, on the clock the benchmark reads.
"""

from __future__ import annotations

import random
import time
from typing import Any

from jobcontrol.worker import JobContext, handler


@handler("bench.progress_probe")
async def progress_probe(ctx: JobContext) -> dict[str, Any]:
    updates = int(ctx.payload.get("updates", 10))
    spacing = float(ctx.payload.get("spacing", 0.3))
    due = time.monotonic() + float(ctx.payload.get("after", 1.0))
    for index in range(1, updates + 1):
        due += random.uniform(spacing, 1.5 * spacing)
        await ctx.sleep(max(0.0, due - time.monotonic()))
        ctx.report_progress(100 * index / updates, stage="bench", message=f"{time.time():.6f}")
    # Returning at once could lose the last update: the runtime cancels the progress
    # writer when the handler returns, and a write it had just handed to the store's
    # driver thread can be dropped before it runs (then nothing is left to flush).
    await ctx.sleep(spacing)
    return {"updates": updates}
