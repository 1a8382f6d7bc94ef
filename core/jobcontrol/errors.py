"""Typed refusals shared by the store, the worker and the server.

Each error's docstring is its default message. The server maps each class to one gRPC
status code in a single table; nothing here knows about gRPC.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


class JobControlError(Exception):
    """The job-control system refused the request."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidArgument(JobControlError):
    """A request field has a value that is not allowed."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class JobNotFound(JobControlError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class WorkerNotFound(JobControlError):
    """No worker has this id."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} not found")
        self.worker_id = worker_id


class AlreadyExists(JobControlError):
    """The idempotency key was already used by a different request."""


class InvalidTransition(JobControlError):
    """The job is in a state that does not allow this change."""


class LeaseLost(JobControlError):
    """The worker no longer holds this job: its lease expired or a newer attempt owns it."""

    def __init__(self, job_id: str, lease_id: str) -> None:
        super().__init__(f"lease {lease_id} on job {job_id} is no longer held")
        self.job_id = job_id
        self.lease_id = lease_id


class StoreUnavailable(JobControlError):
    """The job store cannot be reached or cannot write right now; retry later."""


class UnservedJobType(JobControlError):
    """No live worker serves the job's type, and this server refuses such jobs."""

    def __init__(self, job_types: Sequence[str], served: Collection[str]) -> None:
        named = ", ".join(f'"{t}"' for t in job_types)
        kind = "job type" if len(job_types) == 1 else "job types"
        live = (
            "live workers serve " + ", ".join(f'"{t}"' for t in sorted(served))
            if served
            else "no worker is live"
        )
        super().__init__(
            f"no live worker serves {kind} {named} ({live}), and this server refuses "
            "jobs no worker serves (--reject-unserved-types)"
        )
        self.job_types = tuple(job_types)
