"""Workers as the store records them: who is running jobs, and whether they are alive."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class WorkerState(enum.StrEnum):
    """ACTIVE: claiming and heartbeating; it moves itself to DRAINING or STOPPED.
    DRAINING: finishing its jobs before it stops; it moves itself to STOPPED.
    STOPPED: deregistered cleanly. Terminal.
    LOST: the reaper gave up on it after it went silent; a heartbeat revives it.
    """

    ACTIVE = "ACTIVE"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    LOST = "LOST"


LIVE_WORKER_STATES = frozenset({WorkerState.ACTIVE, WorkerState.DRAINING})


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself when it registers."""

    name: str
    host: str
    pid: int
    job_types: tuple[str, ...]
    concurrency: int


@dataclass(frozen=True, slots=True)
class Worker:
    id: str
    name: str
    host: str
    pid: int
    job_types: tuple[str, ...]
    concurrency: int
    state: WorkerState
    start_time: datetime
    heartbeat_time: datetime
    stop_time: datetime | None = None
    current_job_ids: tuple[str, ...] = field(default_factory=tuple)
