"""What a handler sees of its job: payload, attempt, progress reporting, cancellation.

`report_progress` never blocks and is safe from any thread: it keeps the latest update
and a writer task stores it at most a few times per second; the last update is always
written before the job finishes. A write the store refuses for a while is kept (unless a
newer update replaced it) and tried again after a backoff: progress is never the reason
a job stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from jobcontrol.errors import InvalidArgument, LeaseLost
from jobcontrol.jobs import Job, Progress
from jobcontrol.store import JobStore
from jobcontrol.validation import MAX_PROGRESS_MESSAGE_LENGTH, MAX_STAGE_LENGTH
from jobcontrol.worker.handlers import JobCancelled
from jobcontrol.worker.resilience import Backoff, Episode

log = logging.getLogger(__name__)

PROGRESS_WRITES_PER_SECOND = 4


class StopReason(enum.Enum):
    """Why the runtime asked a handler to stop."""

    CANCEL_REQUESTED = "cancel requested"
    LEASE_LOST = "lease lost"
    SHUTDOWN = "worker shutting down"
    TIMEOUT = "timeout"


class JobContext:
    def __init__(
        self,
        job: Job,
        store: JobStore,
        loop: asyncio.AbstractEventLoop,
        *,
        progress_episode: Episode | None = None,
    ) -> None:
        assert job.lease_id is not None
        self.job = job
        self._store = store
        self._loop = loop
        self._lease_id = job.lease_id
        self._stop = threading.Event()
        self._stop_async = asyncio.Event()
        self.stop_reason: StopReason | None = None
        self._pending: Progress | None = None
        self._progress_wakeup = asyncio.Event()
        self._last_write = 0.0
        self._writer_closing = False
        self._writer_wakeup = asyncio.Event()  # closing, or a backoff cut short
        # Shared by every job of a worker: one outage is one episode in the log.
        self._progress_episode = progress_episode or Episode("progress writes")
        self._progress_backoff = Backoff(base=0.25, cap=5.0)
        self._retry_delay = 0.0
        self.lease_lost = False

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def payload(self) -> Mapping[str, Any]:
        return self.job.payload

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def lease_id(self) -> str:
        return self._lease_id

    # ---- cancellation --------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the handler should stop (cancellation, shutdown, lost lease)."""
        return self._stop.is_set()

    def raise_if_cancelled(self) -> None:
        if self._stop.is_set():
            raise JobCancelled(self.stop_reason.value if self.stop_reason else "cancelled")

    async def wait_cancelled(self) -> None:
        await self._stop_async.wait()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise JobCancelled at once if the job is stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stop_async.wait(), timeout=seconds)
        except TimeoutError:
            return
        self.raise_if_cancelled()

    def request_stop(self, reason: StopReason) -> None:
        """Runtime side: ask the handler to stop (loop thread only)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        self._stop_async.set()

    # ---- progress ------------------------------------------------------------------

    def report_progress(
        self, percent: float, stage: str | None = None, message: str | None = None
    ) -> None:
        """Record progress (0-100). Cheap: stores at most a few writes per second."""
        progress = Progress(
            percent=float(min(100.0, max(0.0, percent))),
            stage=(stage if stage is not None else self._latest().stage)[:MAX_STAGE_LENGTH],
            message=(message or "")[:MAX_PROGRESS_MESSAGE_LENGTH],
        )
        try:
            running_loop = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is self._loop:
            self._set_pending(progress)
        else:
            self._loop.call_soon_threadsafe(self._set_pending, progress)

    def _latest(self) -> Progress:
        return self._pending or self.job.progress

    def _set_pending(self, progress: Progress) -> None:
        self._pending = progress
        self._progress_wakeup.set()

    async def write_progress(self) -> None:
        """Runtime side: the writer task, until `close_progress`. A write in flight is
        never cut short (the runtime stops the writer only between writes), so the last
        update cannot be taken and then lost."""
        interval = 1.0 / PROGRESS_WRITES_PER_SECOND
        while True:
            await self._progress_wakeup.wait()
            if self._closing():
                return
            wait = self._last_write + interval - time.monotonic()
            if self._progress_backoff.failures:
                wait = max(wait, self._retry_delay)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._writer_wakeup.wait(), wait)
            if self._closing():
                return
            try:
                await self.flush_progress()
            except Exception as error:  # kept pending; try again after a backoff
                self._progress_episode.failed(error)
                self._retry_delay = self._progress_backoff.next_delay()
                self._progress_wakeup.set()
            else:
                self._progress_backoff.reset()

    def _closing(self) -> bool:
        return self._writer_closing

    async def close_progress(self, writer: asyncio.Task[None]) -> None:
        """Runtime side: stop the writer once its write in flight (if any) is done. What
        is still pending is written by `flush_progress`, before the job's outcome."""
        self._writer_closing = True
        self._writer_wakeup.set()
        self._progress_wakeup.set()
        await asyncio.gather(writer, return_exceptions=True)

    async def flush_progress(self) -> None:
        """Write the latest update, if any. A store error is raised, and the update stays
        pending (unless a newer one came meanwhile) for the next try."""
        progress = self._pending
        if progress is None or self.lease_lost:
            self._progress_wakeup.clear()
            return
        self._pending = None
        self._progress_wakeup.clear()
        self._last_write = time.monotonic()
        try:
            self.job = await self._store.report_progress(
                job_id=self.job.id, lease_id=self._lease_id, progress=progress
            )
        except LeaseLost:
            self.lease_lost = True
            self.request_stop(StopReason.LEASE_LOST)
            return
        except InvalidArgument as error:
            log.warning("progress of job %s refused: %s", self.job.id, error.message)
            return
        except BaseException:
            if self._pending is None:
                self._pending = progress
            raise
        self._progress_episode.succeeded()
