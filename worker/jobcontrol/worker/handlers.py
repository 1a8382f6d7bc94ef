"""The handler API: register a function per job type, and the errors it may raise.

    from jobcontrol.worker import JobContext, PermanentError, handler

    @handler("images.resize")
    async def resize(ctx: JobContext) -> dict:
        ctx.report_progress(50, stage="resizing")
        return {"ok": True}

Async handlers run on the worker's event loop; plain functions run in a thread so they
cannot stall heartbeats. Any other exception than `PermanentError` is retried (up to the
job's max_attempts, with backoff).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobcontrol.validation import validate_type

if TYPE_CHECKING:
    from jobcontrol.worker.context import JobContext

Result = Mapping[str, Any] | None
HandlerFunction = Callable[["JobContext"], Result | Awaitable[Result]]


class PermanentError(Exception):
    """The job cannot succeed however often it is retried (bad input, missing file)."""

    def __init__(self, message: str, *, code: str = "permanent_error") -> None:
        super().__init__(message)
        self.code = code


class RetryableError(Exception):
    """This attempt failed but another may succeed (the default for any exception)."""

    def __init__(self, message: str, *, code: str = "handler_error") -> None:
        super().__init__(message)
        self.code = code


class JobCancelled(Exception):
    """The handler stopped because the job was cancelled (or the worker is stopping)."""


@dataclass(frozen=True, slots=True)
class Handler:
    job_type: str
    function: HandlerFunction
    is_async: bool


class Registry:
    """Job types and their handlers. `handler` below registers into the default one."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, job_type: str, function: HandlerFunction) -> None:
        validate_type(job_type)
        existing = self._handlers.get(job_type)
        if existing is not None and existing.function is not function:
            raise ValueError(f"job type {job_type!r} already has a handler")
        self._handlers[job_type] = Handler(
            job_type, function, inspect.iscoroutinefunction(function)
        )

    def handler(self, job_type: str) -> Callable[[HandlerFunction], HandlerFunction]:
        def decorate(function: HandlerFunction) -> HandlerFunction:
            self.register(job_type, function)
            return function

        return decorate

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def types(self) -> list[str]:
        return sorted(self._handlers)


default_registry = Registry()
handler = default_registry.handler
