"""Run a command as a child process that a job can stop.

The child gets its own process group, so stopping it (cancellation, timeout, worker
shutdown) reaches everything it started: SIGTERM to the group, then SIGKILL after a
grace period. Output lines go to a callback as they arrive (progress parsers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobcontrol.worker.context import JobContext
from jobcontrol.worker.handlers import JobCancelled

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 5.0
STDERR_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class ChildResult:
    returncode: int
    stderr_tail: str


async def run_child(
    argv: Sequence[str],
    ctx: JobContext,
    *,
    on_stdout_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> ChildResult:
    """Run `argv` (never through a shell) until it exits or the job is stopped.

    Raises JobCancelled if the job was stopped; the child and its group are gone by then.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        start_new_session=True,
    )
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    assert process.stdout is not None
    assert process.stderr is not None

    async def pump(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        while line := await stream.readline():
            sink(line.decode(errors="replace").rstrip("\n"))

    readers = asyncio.gather(
        pump(process.stdout, on_stdout_line or (lambda _line: None)),
        pump(process.stderr, stderr_tail.append),
    )
    stopped: asyncio.Future[Any] = asyncio.create_task(ctx.wait_cancelled())
    watched: set[asyncio.Future[Any]] = {readers, stopped}
    try:
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            await _stop_group(process, grace)
            ctx.raise_if_cancelled()
        returncode = await process.wait()
    finally:
        stopped.cancel()
        if process.returncode is None:  # our task was cancelled: still leave no orphans
            await asyncio.shield(_stop_group(process, grace))
        readers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readers
    return ChildResult(returncode, "\n".join(stderr_tail))


async def _stop_group(process: asyncio.subprocess.Process, grace: float) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        log.warning("child %d ignored SIGTERM for %.1fs; killing it", process.pid, grace)
    # The leader may be gone while others in its group live on: kill the group anyway.
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


__all__ = ["ChildResult", "JobCancelled", "run_child"]
