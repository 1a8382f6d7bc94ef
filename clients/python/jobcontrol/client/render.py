"""How jobctl shows what it gets: a live progress bar when stdout is a terminal, one
plain line per event when it is not (logs, pipes), or one JSON object per event.

JSON is the proto3 JSON mapping of `jobcontrol.v1.JobEvent` / `Job`: lowerCamelCase
field names, enum value names ("EVENT_KIND_PROGRESS"), RFC 3339 timestamps, and int64
fields such as `sequence` as strings. It is what grpcurl and the other-language clients
print, so one parser serves them all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.text import Text

from jobcontrol import convert
from jobcontrol.jobs import Job, JobEvent, JobState
from jobcontrol.workers import Worker


class EventView(Protocol):
    """Shows one job's events as they arrive."""

    def __enter__(self) -> EventView: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def show(self, event: JobEvent) -> None: ...

    def note(self, text: str) -> None:
        """A line for the user beside the events, such as a warning."""


def event_view(*, as_json: bool, out: TextIO = sys.stdout, notes: TextIO = sys.stderr) -> EventView:
    if as_json:
        return JsonLines(out, notes)
    if out.isatty():
        return ProgressBar(Console(file=out))
    return PlainLines(out, notes)


def summary(job: Job) -> str:
    """One line on how a finished job ended."""
    text = f"job {job.id} {job.state}"
    if job.start_time and job.end_time:
        text += f" after {_span(job.end_time - job.start_time)}"
    if job.state is JobState.SUCCEEDED and job.result:
        text += f": {json.dumps(job.result, sort_keys=True)}"
    elif job.state is JobState.FAILED and job.error:
        text += f": {job.error.code}: {job.error.message}"
    elif job.state is JobState.CANCELLED and job.cancel_reason:
        text += f": {job.cancel_reason}"
    return text


def failure_details(job: Job) -> str | None:
    """A failed job's error details (the handler's traceback), so whoever watched it
    fail has what they need to debug it."""
    if job.state is JobState.FAILED and job.error and job.error.details:
        return job.error.details.rstrip("\n")
    return None


class _Lines:
    """A view that writes whole lines, flushed at once, and holds nothing open."""

    def __init__(self, out: TextIO, notes: TextIO) -> None:
        self._out = out
        self._notes = notes

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def note(self, text: str) -> None:
        """On stderr, so the events on stdout stay all of one kind."""
        print(f"jobctl: {text}", file=self._notes, flush=True)


class JsonLines(_Lines):
    """One JSON object per line, for scripts following a job."""

    def show(self, event: JobEvent) -> None:
        self._print(json.dumps(convert.event_to_json(event)))


class PlainLines(_Lines):
    """One line per event and a summary at the end: readable in logs, easy to grep."""

    def show(self, event: JobEvent) -> None:
        job = event.job
        time = event.time.astimezone(UTC).isoformat(timespec="milliseconds")
        parts = [time.replace("+00:00", "Z"), f"#{event.sequence}", str(event.kind), str(job.state)]
        parts.append(f"{job.progress.percent:.0f}%")
        parts.extend(p for p in (job.progress.stage, job.progress.message) if p)
        parts.extend(_notes(job))
        self._print(" ".join(parts))
        if job.is_terminal:
            self._print(summary(job))
            details = failure_details(job)
            if details:
                print(details, file=self._notes, flush=True)


class ProgressBar:
    """A live bar with percent, stage, message, elapsed time and ETA, redrawn in place;
    it stays on screen when the job ends, followed by the summary line."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("[cyan]{task.fields[stage]}"),
            TextColumn("{task.fields[message]}"),
            _Elapsed(),
            _Eta(),
            console=console,
        )
        self._task = self._progress.add_task("", total=100, stage="", message="", job=None)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def note(self, text: str) -> None:
        """Above the bar, which stays at the bottom."""
        self._progress.console.print(f"jobctl: {text}", highlight=False, markup=False)

    def show(self, event: JobEvent) -> None:
        job = event.job
        self._progress.update(
            self._task,
            completed=job.progress.percent,
            description=" ".join([str(job.state), *_notes(job)]),
            stage=job.progress.stage,
            message=job.progress.message,
            job=job,
        )
        if job.is_terminal:
            self._progress.stop()
            self._console.print(summary(job), highlight=False)
            details = failure_details(job)
            if details:
                self._console.print(details, highlight=False, markup=False)


def _notes(job: Job) -> list[str]:
    notes = []
    if job.unserved and job.state is JobState.PENDING:
        notes.append("(no live worker serves its type)")
    if job.queue_position is not None:
        notes.append(f"(queue position {job.queue_position})")
    if job.cancel_requested:
        notes.append("(cancel requested)")
    if job.attempt > 1:
        notes.append(f"(attempt {job.attempt} of {job.max_attempts})")
    return notes


def _elapsed(job: Job | None) -> timedelta | None:
    """Time in the current attempt, by the server's clock where it can: start to end for
    a finished job, start to now (this machine's clock) for a running one."""
    if job is None or job.start_time is None:
        return None
    end = job.end_time or (None if job.is_terminal else datetime.now(UTC))
    if end is None:
        return None
    return max(end - job.start_time, timedelta(0))


class _Elapsed(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = _elapsed(task.fields.get("job"))
        return Text(f"{_clock(elapsed)} elapsed", style="progress.elapsed")


class _Eta(ProgressColumn):
    """Linear estimate from the job's own pace: elapsed * remaining / done."""

    def render(self, task: Task) -> Text:
        job: Job | None = task.fields.get("job")
        elapsed = _elapsed(job)
        eta: timedelta | None = None
        if job is not None and job.is_terminal:
            eta = timedelta(0)
        elif job is not None and elapsed is not None and job.progress.percent > 0:
            percent = min(job.progress.percent, 100.0)
            eta = elapsed * ((100 - percent) / percent)
        return Text(f"ETA {_clock(eta)}", style="progress.remaining")


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    return f"{seconds:.1f}s" if seconds < 60 else _clock(span)


def _clock(span: timedelta | None) -> str:
    if span is None:
        return "-:--:--"
    seconds = int(span.total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02}:{seconds % 60:02}"


def print_table(rows: Iterable[list[str]], header: list[str], out: TextIO = sys.stdout) -> bool:
    """Columns padded to their widest cell; the last column is not padded. Prints
    nothing, not even the header, when there are no rows, and says whether there were."""
    table = [header, *rows]
    if len(table) == 1:
        return False
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
    return True


def job_row(job: Job) -> list[str]:
    return [
        job.id,
        job.type,
        str(job.state),
        f"{job.progress.percent:.0f}%",
        f"{job.attempt}/{job.max_attempts}",
        job.create_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
    ]


JOB_HEADER = ["ID", "TYPE", "STATE", "PROGRESS", "ATTEMPT", "CREATED"]


def worker_row(worker: Worker) -> list[str]:
    return [
        worker.id,
        worker.name,
        str(worker.state),
        f"{len(worker.current_job_ids)}/{worker.concurrency}",
        worker.heartbeat_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        ",".join(worker.job_types),
    ]


WORKER_HEADER = ["ID", "NAME", "STATE", "JOBS", "HEARTBEAT", "TYPES"]


def dump_json(value: Any, out: TextIO = sys.stdout, *, indent: int | None = None) -> None:
    print(json.dumps(value, indent=indent), file=out, flush=True)


def dump_json_array(values: Iterable[Any], out: TextIO = sys.stdout) -> None:
    """One JSON array, an element per line, written as the values come so a long
    listing is never held whole; `[]` when there are none."""
    separator = "["
    for value in values:
        out.write(f"{separator}{json.dumps(value)}")
        separator = ",\n"
    out.write("[]\n" if separator == "[" else "]\n")
    out.flush()
