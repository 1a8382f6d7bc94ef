"""The jobcontrol worker: claims jobs from the store and runs their handlers.

Handler authors need only this module's names: `handler` (with per-type `max_attempts`,
`timeout` and `retry` settings), `RetryPolicy`, `JobContext`, `PermanentError`,
`RetryableError`, `JobCancelled` and `run_child`; and `jobcontrol.worker.testing` to run
a handler in a unit test.
"""

from __future__ import annotations

from jobcontrol.retry import RetryPolicy
from jobcontrol.worker.child_process import ChildResult, run_child
from jobcontrol.worker.context import JobContext
from jobcontrol.worker.handlers import (
    JobCancelled,
    PermanentError,
    Registry,
    RetryableError,
    default_registry,
    handler,
)

__all__ = [
    "ChildResult",
    "JobCancelled",
    "JobContext",
    "PermanentError",
    "Registry",
    "RetryPolicy",
    "RetryableError",
    "default_registry",
    "handler",
    "run_child",
]
