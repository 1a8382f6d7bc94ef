"""A user handler module, loaded by a real worker with `--handlers tests.worker.sample_handlers`."""

from __future__ import annotations

from typing import Any

from jobcontrol.worker import JobContext, handler


@handler("sample.echo")
def echo(ctx: JobContext) -> dict[str, Any]:
    ctx.report_progress(50, stage="echoing")
    return {"echo": dict(ctx.payload), "attempt": ctx.attempt}
