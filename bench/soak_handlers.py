"""The soak's job type, loaded with `--handlers bench.soak_handlers`: `soak.work` does
what `demo.sleep` does (sleep in steps, reporting progress), fails retryably on its
first `fail_attempts` attempts, and logs each handler start and end to the file named by
$SOAK_HANDLER_LOG, so the soak can tell an attempt that ran twice from one whose worker
was killed.

Each line is "WHAT JOB_ID ATTEMPT PID TIME" (WHAT: start, finish or fail; TIME:
time.time()), written with one write(2) on a descriptor opened with O_APPEND: lines from
concurrent workers never interleave, and a line is in the file before the handler goes
on, so a worker killed -9 right after cannot lose it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobcontrol.worker import JobContext, RetryableError, handler
from jobcontrol.worker.builtin.demo_sleep import demo_sleep

LOG_ENV = "SOAK_HANDLER_LOG"
JOB_TYPE = "soak.work"
FAIL_CODE = "soak_transient"


def _log(what: str, ctx: JobContext) -> None:
    line = f"{what} {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@handler(JOB_TYPE)
async def work(ctx: JobContext) -> dict[str, Any]:
    """Payload: {"seconds", "steps"} as for demo.sleep, and "fail_attempts" (default 0):
    the attempts up to that number raise a RetryableError after sleeping."""
    _log("start", ctx)
    result = await demo_sleep(ctx)  # stops with JobCancelled when cancelled
    if ctx.attempt <= int(ctx.payload.get("fail_attempts", 0)):
        _log("fail", ctx)
        raise RetryableError(f"attempt {ctx.attempt} was asked to fail", code=FAIL_CODE)
    _log("finish", ctx)
    return result
