"""Handlers for the client tests, loaded by a real worker with
`--handlers tests.clients.number_handlers`: results whose numbers must come back as
the handler returned them."""

from __future__ import annotations

from typing import Any

from jobcontrol.worker import JobContext, handler

HUGE = 2**60  # past 2**53: a double cannot promise it is this integer


@handler("numbers.sizes")
def sizes(ctx: JobContext) -> dict[str, Any]:
    return {
        "bytes": 160514,
        "ratio": 0.5,
        "negative": -3,
        "nested": {"counts": [1, 2, {"deep": 3}], "half": 1.5},
        "huge": HUGE,
        "echo": dict(ctx.payload),
    }
