"""Handlers with per-type settings, loaded by a real worker with
`--handlers tests.worker.typed_handlers`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from jobcontrol.worker import JobContext, RetryPolicy, handler

# Long enough that a test sees the job wait for its next attempt, never run it.
SLOW_BACKOFF = RetryPolicy(base=timedelta(seconds=40), factor=3.0, cap=timedelta(seconds=60))


@handler("typed.once", max_attempts=1)
def fail_once(ctx: JobContext) -> dict[str, Any]:
    raise RuntimeError(f"attempt {ctx.attempt} of {ctx.max_attempts} failed")


@handler("typed.slow", timeout="300ms", max_attempts=1)
async def overrun(ctx: JobContext) -> dict[str, Any]:
    await ctx.sleep(60)
    return {"finished": True}


@handler("typed.backoff", max_attempts=2, retry=SLOW_BACKOFF)
def fail_with_slow_backoff(ctx: JobContext) -> dict[str, Any]:
    raise RuntimeError("try again later")
