"""A user handler module for the fault tests, loaded with `--handlers
tests.e2e.counting_handlers`: `test.count_sleep` does what `demo.sleep` does, then, right
before returning, appends "JOB_ID ATTEMPT" to the file named by $COUNTING_HANDLER_LOG.

The line is one write(2) on a descriptor opened with O_APPEND, so lines from concurrent
workers never interleave and a line is in the file before the handler returns: the file
counts handler completions for real, including those of attempts whose worker was
killed before it could record the result.
"""

from __future__ import annotations

import os
from typing import Any

from jobcontrol.worker import JobContext, handler
from jobcontrol.worker.builtin.demo_sleep import demo_sleep

LOG_ENV = "COUNTING_HANDLER_LOG"


@handler("test.count_sleep")
async def count_sleep(ctx: JobContext) -> dict[str, Any]:
    result = await demo_sleep(ctx)
    line = f"{ctx.job_id} {ctx.attempt}\n".encode()
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return result
