"""`jobctl top`: a live table of jobs and workers.

Jobs come from one WatchJobs stream, never from polling: the board keeps the newest
state of each job and redraws at most a few times a second however fast events come,
so thousands of jobs cost one table draw per frame, not one per event. It starts from
a ListJobs of the active jobs and the most recent ones, so what was there before `top`
started shows too. Workers are listed again every couple of seconds.

States are filtered here, not by the server: a server-side state filter would hide the
event that moves a job out of the state, and the job would look stuck in it.
"""

from __future__ import annotations

import heapq
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from jobcontrol import convert
from jobcontrol.client.errors import Unavailable
from jobcontrol.client.sync import JobControlClient
from jobcontrol.jobs import Job, JobState
from jobcontrol.workers import Worker

# How long the job stream keeps reconnecting to a server that went away before top
# gives up and says so.
RECONNECT_TIMEOUT = 10.0
REDRAWS_PER_SECOND = 4
WORKERS_REFRESH_SECONDS = 2.0
# Where the table starts: every active job (up to a bound) and the newest of the rest.
SEED_ACTIVE = 10_000
SEED_RECENT = 1_000
# Finished jobs whose details are kept for the table; their states still count after.
KEPT_JOBS = 20_000
# Terminal output that is not a terminal (`--once` in a script) is not cut at 80 columns.
PIPE_WIDTH = 200
_STATE_STYLE = {
    JobState.PENDING: "yellow",
    JobState.RUNNING: "cyan",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "magenta",
}


@dataclass(frozen=True, slots=True)
class TopFilter:
    """Which jobs to show: types and labels go to the server, states are applied here."""

    states: frozenset[JobState] = frozenset()
    types: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def shows(self, job: Job) -> bool:
        return not self.states or job.state in self.states

    @property
    def shown_states(self) -> list[JobState]:
        return [state for state in JobState if not self.states or state in self.states]


class Board:
    """The newest state of every job seen, and the workers, shared between the threads
    that feed it and the one that draws it. `version` changes with every change, so the
    drawing thread can tell whether there is anything new to draw."""

    def __init__(self, view: TopFilter) -> None:
        self.view = view
        self.version = 0
        self.failure: BaseException | None = None
        self.workers: list[Worker] = []
        self.workers_problem = ""
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._states: dict[str, JobState] = {}
        self._counts: Counter[JobState] = Counter()

    def offer(self, job: Job) -> None:
        """Keeps `job` unless a newer state of it is already here (a listing can finish
        after the stream delivered a later change)."""
        with self._lock:
            current = self._jobs.get(job.id)
            if current is not None and current.update_time > job.update_time:
                return
            previous = self._states.get(job.id)
            if previous is not None:
                self._counts[previous] -= 1
            self._counts[job.state] += 1
            self._states[job.id] = job.state
            self._jobs[job.id] = job
            if len(self._jobs) > KEPT_JOBS * 11 // 10:
                self._forget_oldest_finished()
            self.version += 1

    def set_workers(self, workers: list[Worker], problem: str = "") -> None:
        with self._lock:
            if problem:
                self.workers_problem = problem
            else:
                self.workers, self.workers_problem = workers, ""
            self.version += 1

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self.failure = error
            self.version += 1

    def frame(self, rows: int) -> Frame:
        """What to draw: running jobs first, then the most recently changed, and the
        count of matching jobs in each state."""
        with self._lock:
            shown = [job for job in self._jobs.values() if self.view.shows(job)]
            counts = {state: self._counts[state] for state in self.view.shown_states}
            workers = list(self.workers)
            problem = self.workers_problem
        top_rows = heapq.nlargest(
            rows, shown, key=lambda job: (job.state is JobState.RUNNING, job.update_time)
        )
        unserved = sum(1 for job in shown if job.unserved and job.state is JobState.PENDING)
        return Frame(top_rows, len(shown), counts, unserved, workers, problem)

    def _forget_oldest_finished(self) -> None:
        finished = [job for job in self._jobs.values() if job.is_terminal]
        excess = len(self._jobs) - KEPT_JOBS
        for job in heapq.nsmallest(excess, finished, key=lambda job: job.update_time):
            del self._jobs[job.id]


@dataclass(frozen=True, slots=True)
class Frame:
    jobs: list[Job]
    matching: int
    counts: dict[JobState, int]
    unserved: int
    workers: list[Worker]
    workers_problem: str

    def render(self, address: str, now: datetime) -> RenderableType:
        title = Text.assemble(
            ("jobctl top ", "bold"), address, "  ", now.strftime("%H:%M:%SZ"), "  Ctrl-C leaves"
        )
        counts = Text("  ").join(
            Text.assemble((f"{state} ", _STATE_STYLE[state]), str(count))
            for state, count in self.counts.items()
        )
        if self.unserved:
            counts.append(f"  ({self.unserved} pending with no live worker for their type)")
        jobs = Table(expand=False, box=None, pad_edge=False, header_style="bold")
        for name in ("ID", "TYPE", "STATE", "PROGRESS", "ATTEMPT", "UPDATED", "NOTE"):
            jobs.add_column(name, no_wrap=name != "NOTE", overflow="ellipsis")
        for job in self.jobs:
            jobs.add_row(
                job.id,
                job.type,
                Text(str(job.state), style=_STATE_STYLE[job.state]),
                f"{job.progress.percent:.0f}%",
                f"{job.attempt}/{job.max_attempts}",
                f"{_age(now - job.update_time)} ago",
                _note(job),
            )
        parts: list[RenderableType] = [title, counts, jobs]
        if self.matching > len(self.jobs):
            parts.append(Text(f"… and {self.matching - len(self.jobs)} more", style="dim"))
        if not self.matching:
            parts.append(Text("no jobs match yet", style="dim"))
        parts.append(Text(""))
        parts.append(self._workers_table(now))
        return Group(*parts)

    def _workers_table(self, now: datetime) -> RenderableType:
        if self.workers_problem:
            return Text(f"workers: {self.workers_problem}", style="red")
        if not self.workers:
            return Text("no live workers", style="yellow")
        table = Table(expand=False, box=None, pad_edge=False, header_style="bold")
        for name in ("WORKER", "STATE", "JOBS", "HEARTBEAT", "TYPES"):
            table.add_column(name, no_wrap=name != "TYPES")
        for worker in self.workers:
            table.add_row(
                worker.name,
                str(worker.state),
                f"{len(worker.current_job_ids)}/{worker.concurrency}",
                f"{_age(now - worker.heartbeat_time)} ago",
                ",".join(worker.job_types),
            )
        return table


def run(
    client: JobControlClient,
    view: TopFilter,
    *,
    rows: int | None,
    once: bool,
    after_sequence: int | None = None,
) -> int:
    """Draws until Ctrl-C (KeyboardInterrupt, which jobctl turns into exit 130) or until
    the stream gives up on a server that went away (its error ends top). With
    `after_sequence` the stream first replays the stored events after it."""
    out = sys.stdout
    console = Console(file=out, width=None if out.isatty() else PIPE_WIDTH)
    board = Board(view)
    if once:
        _seed(client, board)
        board.set_workers(client.workers())
        _draw_once(console, board, rows, client.options.address)
        return 0
    stop = threading.Event()
    threading.Thread(target=_follow_jobs, args=(client, board, after_sequence), daemon=True).start()
    _seed(client, board)
    threading.Thread(target=_follow_workers, args=(client, board, stop), daemon=True).start()
    try:
        with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
            drawn, drawn_at = -1, 0.0
            while (failure := board.failure) is None:
                # Redrawn when something changed, and every second for the ages.
                if board.version != drawn or time.monotonic() - drawn_at >= 1:
                    drawn, drawn_at = board.version, time.monotonic()
                    frame = board.frame(rows or _fitting_rows(console, board))
                    live.update(frame.render(client.options.address, _now()), refresh=True)
                stop.wait(1 / REDRAWS_PER_SECOND)
    finally:
        stop.set()
    raise failure


def stream_json(
    client: JobControlClient, view: TopFilter, *, after_sequence: int | None = None
) -> int:
    """`top --json`: every change to a matching job, one proto3 JSON event per line."""
    events = client.watch_jobs(types=view.types, labels=view.labels, after_sequence=after_sequence)
    for event in events:
        if view.shows(event.job):
            print(json.dumps(convert.event_to_json(event)), flush=True)
    return 0


def _seed(client: JobControlClient, board: Board) -> None:
    """What was there before top started: the newest jobs, and the active ones however
    old (both bounded); the stream brings every change after."""
    view = board.view
    active = [JobState.PENDING, JobState.RUNNING]
    if view.states:
        active = [state for state in active if state in view.states]
    listings: list[Iterable[Job]] = [
        islice(
            client.list(
                states=view.states, types=view.types, labels=view.labels, page_size=SEED_RECENT
            ),
            SEED_RECENT,
        )
    ]
    if active:
        listings.append(
            islice(
                client.list(states=active, types=view.types, labels=view.labels, page_size=1000),
                SEED_ACTIVE,
            )
        )
    for listing in listings:
        for job in listing:
            board.offer(job)


def _follow_jobs(client: JobControlClient, board: Board, after_sequence: int | None) -> None:
    view = board.view
    try:
        events = client.watch_jobs(
            types=view.types, labels=view.labels, after_sequence=after_sequence
        )
        for event in events:
            board.offer(event.job)
    except BaseException as error:  # any end of the stream ends top: the drawer reports it
        board.fail(error)


def _follow_workers(client: JobControlClient, board: Board, stop: threading.Event) -> None:
    """While the server is away the table says so; the job stream decides when to give up."""
    while not stop.is_set():
        try:
            board.set_workers(client.workers())
        except Unavailable as error:
            board.set_workers([], problem=f"server unreachable, retrying ({error})")
        except BaseException as error:  # not an outage: the drawer reports it
            board.fail(error)
            return
        stop.wait(WORKERS_REFRESH_SECONDS)


def _draw_once(console: Console, board: Board, rows: int | None, address: str) -> None:
    frame = board.frame(rows or _fitting_rows(console, board))
    console.print(frame.render(address, _now()))


def _fitting_rows(console: Console, board: Board) -> int:
    """As many job rows as fit beside the title, counts and workers table."""
    return max(5, console.height - len(board.workers) - 8)


def _note(job: Job) -> str:
    if job.unserved and job.state is JobState.PENDING:
        return "no live worker serves this type"
    if job.state is JobState.FAILED and job.error:
        return f"{job.error.code}: {job.error.message}"
    if job.state is JobState.CANCELLED and job.cancel_reason:
        return job.cancel_reason
    if job.cancel_requested:
        return "cancel requested"
    parts = [part for part in (job.progress.stage, job.progress.message) if part]
    if job.queue_position is not None:
        parts.append(f"queue position {job.queue_position}")
    return " ".join(parts)


def _age(span: timedelta) -> str:
    seconds = max(int(span.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86_400}d"


def _now() -> datetime:
    return datetime.now(UTC)
