"""What a store must look like after any fault: no half-written transition, and every
job's history a path through the state machine. Shared by the fault tests
(tests/e2e/test_faults.py) and the soak (bench/soak.py), which read the store through
the same blocking calls (`tests.worker.conftest.SyncStore` over the SQLite file).

The reads are several store calls, not one snapshot, so a check that finds a difference
while events are still being written reads again before blaming the store.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

from jobcontrol.jobs import ALLOWED_TRANSITIONS, EventKind, Job, JobEvent, JobState

TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
TERMINAL_KINDS = frozenset({EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED})

# How each kind of event changes the attempt number (others leave it alone).
ATTEMPT_STEP = {EventKind.STARTED: 1, EventKind.RELEASED: -1}
# The job state each kind of event leaves behind.
STATE_AFTER = {
    EventKind.SUBMITTED: {JobState.PENDING},
    EventKind.STARTED: {JobState.RUNNING},
    EventKind.PROGRESS: {JobState.RUNNING},
    EventKind.CANCEL_REQUESTED: {JobState.RUNNING},
    EventKind.SUCCEEDED: {JobState.SUCCEEDED},
    EventKind.FAILED: {JobState.FAILED},
    EventKind.CANCELLED: {JobState.CANCELLED},
    EventKind.RETRY_SCHEDULED: {JobState.PENDING},
    EventKind.RELEASED: {JobState.PENDING},
    EventKind.RETRIED: {JobState.PENDING},
}

Histories = dict[str, list[JobEvent]]


class EventStore(Protocol):
    """The blocking store calls the checks make (`SyncStore` has them all)."""

    def list_events(self, *, after_sequence: int, limit: int) -> list[JobEvent]: ...

    def last_sequence(self) -> int: ...

    def count_jobs_by_state(self) -> Mapping[JobState, int]: ...

    def latest_events(self, job_ids: list[str]) -> Mapping[str, JobEvent]: ...

    def get_job(self, job_id: str) -> Job: ...


def histories(store: EventStore) -> Histories:
    """Every stored event, grouped by job, oldest first."""
    by_job: dict[str, list[JobEvent]] = defaultdict(list)
    after = 0
    while batch := store.list_events(after_sequence=after, limit=5000):
        for event in batch:
            by_job[event.job.id].append(event)
        after = batch[-1].sequence
    return dict(by_job)


def partial_transitions(store: EventStore, tries: int = 10) -> tuple[Histories, list[str]]:
    """Every job's history, and what is wrong with them: a row that differs from the
    snapshot in its newest event, or events that do not follow the state machine (a
    change and its event not written together). A difference is only blamed on the store
    when no event was written while the reads ran (else they are read again)."""
    for _ in range(tries):
        sequence = store.last_sequence()
        stories, problems = _partial_transitions(store)
        if not problems or store.last_sequence() == sequence:
            break
    return stories, problems


def assert_no_partial_transitions(store: EventStore) -> Histories:
    """`partial_transitions`, failing the test on any problem."""
    stories, problems = partial_transitions(store)
    assert not problems, "\n".join(problems[:10])
    return stories


def _partial_transitions(store: EventStore) -> tuple[Histories, list[str]]:
    stories = histories(store)
    problems = []
    counts = store.count_jobs_by_state()
    if sum(counts.values()) != len(stories):
        problems.append(f"{sum(counts.values())} jobs but {len(stories)} have events")
    newest = store.latest_events(list(stories))
    for job_id, story in stories.items():
        if newest[job_id].sequence != story[-1].sequence:
            problems.append(f"job {job_id}: newest event {newest[job_id].sequence}")
        row, event = comparable(store.get_job(job_id)), comparable(newest[job_id].job)
        if event != row:
            fields = "; ".join(
                f"{name}: row {getattr(row, name)!r}, event {getattr(event, name)!r}"
                for name in (f.name for f in dataclasses.fields(row))
                if getattr(row, name) != getattr(event, name)
            )
            problems.append(f"job {job_id} ({row.state}) differs from its newest event: {fields}")
        if story[0].kind is not EventKind.SUBMITTED:
            problems.append(f"job {job_id} starts with {story[0].kind}")
        for before, after in itertools.pairwise(story):
            if after.job.state not in ALLOWED_TRANSITIONS[before.job.state]:
                problems.append(
                    f"job {job_id}: {before.kind} ({before.job.state}) -> "
                    f"{after.kind} ({after.job.state}) is not an allowed transition"
                )
            step = ATTEMPT_STEP.get(after.kind, 0)
            if after.job.attempt != before.job.attempt + step:
                problems.append(
                    f"job {job_id}: attempt {before.job.attempt} -> {after.job.attempt} "
                    f"at {after.kind}"
                )
        problems += [
            f"job {job_id}: a {event.kind} event with the job {event.job.state}"
            for event in story
            if event.job.state not in STATE_AFTER[event.kind]
        ]
    return stories, problems


def comparable(job: Job) -> Job:
    """What an event must agree on with the row: everything but the queue position
    (computed when read) and the lease expiry (heartbeats renew it without an event)."""
    return dataclasses.replace(job, queue_position=None, lease_expire_time=None)


def started_attempts(story: Sequence[JobEvent]) -> list[int]:
    return [e.job.attempt for e in story if e.kind is EventKind.STARTED]


def terminal_problem(job_id: str, story: Sequence[JobEvent]) -> str | None:
    """Why the job did not reach exactly one terminal state, or None: after its last
    RETRIED (a new life granted by RetryJob) there must be exactly one terminal event,
    and it must be the last event."""
    retried = [i for i, event in enumerate(story) if event.kind is EventKind.RETRIED]
    life = story[retried[-1] + 1 :] if retried else story
    ends = [i for i, event in enumerate(life) if event.kind in TERMINAL_KINDS]
    if not ends:
        last = life[-1] if life else story[-1]
        return f"job {job_id}: no terminal event (last {last.kind}, {last.job.state})"
    if len(ends) > 1:
        kinds = ", ".join(life[i].kind for i in ends)
        return f"job {job_id}: {len(ends)} terminal events ({kinds})"
    if ends[0] != len(life) - 1:
        after = ", ".join(event.kind for event in life[ends[0] + 1 :])
        return f"job {job_id}: events after its terminal {life[ends[0]].kind}: {after}"
    return None
