"""`demo.sleep`: waits, reporting progress; for trying the system and for tests.

Payload: {"seconds": float, "steps": int, "fail": "transient" | "permanent" | absent}.
"""

from __future__ import annotations

import math
from typing import Any

from jobcontrol.worker.context import JobContext
from jobcontrol.worker.handlers import PermanentError, RetryableError, handler

MAX_SECONDS = 24 * 3600
MAX_STEPS = 10_000


@handler("demo.sleep")
async def demo_sleep(ctx: JobContext) -> dict[str, Any]:
    seconds = _number(ctx.payload.get("seconds", 1.0), "seconds", 0, MAX_SECONDS)
    steps = int(_number(ctx.payload.get("steps", 10), "steps", 0, MAX_STEPS))
    fail = ctx.payload.get("fail")
    if fail not in (None, "transient", "permanent"):
        raise PermanentError(f"fail must be 'transient', 'permanent' or absent, got {fail!r}")
    for step in range(1, steps + 1):
        await ctx.sleep(seconds / steps)
        ctx.report_progress(100 * step / steps, stage="sleeping", message=f"step {step}/{steps}")
    if steps == 0:
        await ctx.sleep(seconds)
    ctx.raise_if_cancelled()
    if fail == "transient":
        raise RetryableError("demo.sleep was asked to fail (transient)", code="demo_transient")
    if fail == "permanent":
        raise PermanentError("demo.sleep was asked to fail (permanent)", code="demo_permanent")
    return {"slept_seconds": seconds, "steps": steps, "attempt": ctx.attempt}


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PermanentError(f"{name} must be a number, got {value!r}", code="bad_payload")
    if not low <= value <= high:
        raise PermanentError(
            f"{name} must be between {low} and {high}, got {value}", code="bad_payload"
        )
    return float(value)
