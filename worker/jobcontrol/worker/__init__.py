"""The jobcontrol worker: claims jobs from the store and runs their handlers.

Handler authors need only this module's names: `handler`, `JobContext`,
`PermanentError`, `RetryableError`, `JobCancelled` and `run_child`.
"""

from __future__ import annotations

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
    "RetryableError",
    "default_registry",
    "handler",
    "run_child",
]
