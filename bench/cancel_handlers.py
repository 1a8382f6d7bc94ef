"""A handler module for the cancel-latency benchmark (`--handlers bench.cancel_handlers`).

`bench.cancel_probe` waits like `demo.sleep` does (`ctx.sleep`, which returns early
when the job is stopped) and, the moment it sees it was stopped, writes time.time() to
BENCH_CANCEL_DIR/<job id>: when the handler saw the cancellation, on the clock the
benchmark reads too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobcontrol.worker import JobContext, handler


@handler("bench.cancel_probe")
async def cancel_probe(ctx: JobContext) -> dict[str, Any]:
    try:
        await ctx.sleep(float(ctx.payload.get("seconds", 60)))
    finally:
        # Either ctx.sleep raised JobCancelled or the runtime cancelled this task first:
        # both are the handler learning of the stop.
        if ctx.cancelled:
            seen = time.time()  # taken first: writing the file cannot skew it
            path = Path(os.environ["BENCH_CANCEL_DIR"], ctx.job_id)
            path.write_text(repr(seen))  # noqa: ASYNC240 (a few bytes)
    return {}
