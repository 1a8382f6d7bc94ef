"""Python client of the jobcontrol service: `JobControlClient` (blocking) and
`AsyncJobControlClient` (asyncio), with the same methods and typed results.

    with JobControlClient("127.0.0.1:50051") as client:
        job = client.submit("demo.sleep", {"seconds": 2})
        for event in client.watch(job.id):
            print(event.kind, event.job.progress.percent)
"""

from __future__ import annotations

from jobcontrol.client.aio import AsyncJobControlClient
from jobcontrol.client.backoff import Backoff
from jobcontrol.client.calls import SubmittedJob, SubmittedJobs
from jobcontrol.client.errors import (
    DeadlineExceeded,
    RpcFailed,
    Unauthenticated,
    Unavailable,
    status_name,
)
from jobcontrol.client.options import ClientOptions, TlsOptions
from jobcontrol.client.sync import JobControlClient
from jobcontrol.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidTransition,
    JobControlError,
    JobNotFound,
)
from jobcontrol.jobs import EventKind, Job, JobError, JobEvent, JobSpec, JobState, Progress
from jobcontrol.workers import Worker, WorkerState

__all__ = [
    "AlreadyExists",
    "AsyncJobControlClient",
    "Backoff",
    "ClientOptions",
    "DeadlineExceeded",
    "EventKind",
    "InvalidArgument",
    "InvalidTransition",
    "Job",
    "JobControlClient",
    "JobControlError",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "Progress",
    "RpcFailed",
    "SubmittedJob",
    "SubmittedJobs",
    "TlsOptions",
    "Unauthenticated",
    "Unavailable",
    "Worker",
    "WorkerState",
    "status_name",
]
