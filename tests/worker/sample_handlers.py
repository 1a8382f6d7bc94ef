"""A user handler module, loaded by a real worker with `--handlers tests.worker.sample_handlers`."""

from __future__ import annotations

from typing import Any

from jobcontrol.worker import JobContext, handler


@handler("sample.echo")
def echo(ctx: JobContext) -> dict[str, Any]:
    ctx.report_progress(50, stage="echoing")
    return {"echo": dict(ctx.payload), "attempt": ctx.attempt}


@handler("sample.missing_key")
def look_up_the_missing_key(ctx: JobContext) -> dict[str, Any]:
    """Fails as a handler with a bug does: a KeyError raised in its own code."""
    settings: dict[str, str] = {}
    return {"value": settings[ctx.payload.get("key", "missing")]}


@handler("sample.deep_failure")
def fail_deep_down(ctx: JobContext) -> dict[str, Any]:
    """A traceback far longer than 16 KiB: hundreds of frames, no two in a row alike
    (Python folds repeated ones)."""
    return _descend_left(int(ctx.payload.get("depth", 400)))


def _descend_left(depth: int) -> dict[str, Any]:
    return _descend_right(depth - 1) if depth else {}["bottom"]


def _descend_right(depth: int) -> dict[str, Any]:
    return _descend_left(depth - 1) if depth else {}["bottom"]


@handler("sample.stops_early")
def stop_early(ctx: JobContext) -> dict[str, Any]:
    """Done before its progress said so, as many handlers are."""
    ctx.report_progress(75, stage="working", message="step 3/4")
    return {}
