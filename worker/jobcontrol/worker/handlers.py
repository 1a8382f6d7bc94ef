"""The handler API: register a function per job type, its settings, and the errors it
may raise.

    from datetime import timedelta

    from jobcontrol.worker import JobContext, PermanentError, RetryPolicy, handler

    @handler("images.resize", max_attempts=5, timeout="2m",
             retry=RetryPolicy(base=timedelta(seconds=5), cap=timedelta(minutes=1)))
    async def resize(ctx: JobContext) -> dict:
        ctx.report_progress(50, stage="resizing")
        return {"ok": True}

Async handlers run on the worker's event loop; plain functions run in a thread so they
cannot stall heartbeats. Any other exception than `PermanentError` is retried (up to the
attempts allowed, with backoff).

Per-type settings, all optional, are checked when the decorator runs:

- `max_attempts`: attempts for a job of this type submitted without a choice of its own.
  The store keeps a job's max_attempts (3 when the submitter gave none) and cannot tell
  an explicit 3 from the default, so the handler's value applies to jobs whose
  max_attempts is the default, 3, and any other value the submitter chose wins. When
  an attempt fails the limit that decided is stored with the job, so a job failed after
  its handler's single attempt reads "attempt 1 of 1", and its FAILED or
  RETRY_SCHEDULED event agrees with it.
- `timeout`: the longest one attempt may run when the job has no timeout of its own;
  past it the worker stops the handler and the attempt fails with `deadline_exceeded`
  (retried like any failure). A timedelta, seconds, or a duration such as "90s".
- `retry`: the `RetryPolicy` for this type's backoff between attempts, instead of the
  store's.

The worker applies these. An attempt the server's reaper ends instead (its worker died,
or it overran a timeout the job itself set) is retried by the job's own max_attempts and
the store's policy: the reaper does not know the handlers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from jobcontrol.durations import MAX_SECONDS, parse_duration
from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import DEFAULT_MAX_ATTEMPTS, Job
from jobcontrol.retry import RetryPolicy
from jobcontrol.validation import MAX_ATTEMPTS_LIMIT, validate_type

if TYPE_CHECKING:
    from jobcontrol.worker.context import JobContext

Result = Mapping[str, Any] | None
HandlerFunction = Callable[["JobContext"], Result | Awaitable[Result]]
Duration = timedelta | float | str


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
    """A registered handler and its type's settings (None: the job's or the store's)."""

    job_type: str
    function: HandlerFunction
    is_async: bool
    max_attempts: int | None = None
    timeout: timedelta | None = None
    retry: RetryPolicy | None = None

    def attempts_for(self, job: Job) -> int:
        """The attempts `job` is allowed: see the module docstring."""
        if self.max_attempts is not None and job.max_attempts == DEFAULT_MAX_ATTEMPTS:
            return self.max_attempts
        return job.max_attempts

    def timeout_for(self, job: Job) -> timedelta | None:
        return job.timeout or self.timeout


class Registry:
    """Job types and their handlers. `handler` below registers into the default one."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self,
        job_type: str,
        function: HandlerFunction,
        *,
        max_attempts: int | None = None,
        timeout: Duration | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Raises ValueError or TypeError naming the type and the setting at fault."""
        try:
            validate_type(job_type)
        except InvalidArgument as error:
            raise ValueError(f"@handler({job_type!r}): the job type {error.description}") from None
        if not callable(function):
            raise TypeError(f"handler for {job_type!r} must be callable, got {function!r}")
        entry = Handler(
            job_type,
            function,
            inspect.iscoroutinefunction(function),
            max_attempts=_max_attempts(job_type, max_attempts),
            timeout=_timeout(job_type, timeout),
            retry=_retry(job_type, retry),
        )
        existing = self._handlers.get(job_type)
        if existing is not None and existing.function is not function:
            raise ValueError(f"job type {job_type!r} already has a handler")
        self._handlers[job_type] = entry

    def handler(
        self,
        job_type: str,
        *,
        max_attempts: int | None = None,
        timeout: Duration | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[HandlerFunction], HandlerFunction]:
        """Decorator: `@handler("type", max_attempts=..., timeout=..., retry=...)`."""

        def decorate(function: HandlerFunction) -> HandlerFunction:
            self.register(
                job_type, function, max_attempts=max_attempts, timeout=timeout, retry=retry
            )
            return function

        return decorate

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def types(self) -> list[str]:
        return sorted(self._handlers)


def _max_attempts(job_type: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"@handler({job_type!r}): max_attempts must be an int, got {value!r}")
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(
            f"@handler({job_type!r}): max_attempts must be between 1 and "
            f"{MAX_ATTEMPTS_LIMIT}, got {value}"
        )
    return value


def _timeout(job_type: str, value: Duration | None) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as error:
            raise ValueError(f"@handler({job_type!r}): timeout: {error}") from None
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise TypeError(
            f"@handler({job_type!r}): timeout must be a timedelta, seconds or a duration "
            f"such as '90s', got {value!r}"
        )
    if not isinstance(value, timedelta) and not (math.isfinite(value) and value <= MAX_SECONDS):
        raise ValueError(f"@handler({job_type!r}): timeout must be at most a year, got {value}")
    limit = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if limit <= timedelta(0):
        raise ValueError(f"@handler({job_type!r}): timeout must be more than zero, got {value}")
    return limit


def _retry(job_type: str, value: RetryPolicy | None) -> RetryPolicy | None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise TypeError(
            f"@handler({job_type!r}): retry must be a jobcontrol.worker.RetryPolicy, got {value!r}"
        )
    return value


default_registry = Registry()
handler = default_registry.handler
