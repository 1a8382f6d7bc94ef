"""What a handler sees of its job (`JobContext`), and the runtime's side of a running
job (`JobRun`: lease, stop signal, progress writer), which handlers never see.

Progress never blocks a handler and is safe from any thread: the runtime keeps the
latest update and a writer task stores it at most a few times per second; the last
update is always written before the job finishes. A write the store refuses for a while
is kept (unless a newer update replaced it) and tried again after a backoff: progress is
never the reason a job stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from jobcontrol.errors import InvalidArgument, LeaseLost
from jobcontrol.jobs import Job, Progress
from jobcontrol.store import JobStore
from jobcontrol.validation import MAX_PROGRESS_MESSAGE_LENGTH, MAX_STAGE_LENGTH
from jobcontrol.worker.fetch_guard import FetchAllowList
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


class StopSignal:
    """Whether, and why, a handler should stop: set by the runtime (or a test
    environment) from any thread, seen by sync handlers as a flag and by async ones as a
    future on `loop`. Made once per attempt, so it holds no lock: a flag written under
    the GIL is seen by every thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stopped = False
        self._future: asyncio.Future[None] = loop.create_future()
        self.reason: StopReason | None = None

    @property
    def is_set(self) -> bool:
        return self._stopped

    @property
    def future(self) -> asyncio.Future[None]:
        """Done once a stop is requested. Wait for it with `asyncio.wait`, which never
        cancels what it waits for; awaiting it from a task that is then cancelled would
        cancel it for everyone."""
        return self._future

    def request(self, reason: StopReason) -> None:
        """The first reason given is the one kept."""
        if self.reason is None:
            self.reason = reason
        self._stopped = True
        if _running_loop() is self._loop:
            self._resolve()
        else:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        await asyncio.shield(self._future)


class JobContext:
    """What a handler gets for one attempt at one job.

    About the job: `job_id`, `job_type`, `payload`, `labels`, `attempt` (1 for the first
    run), `max_attempts` (the attempts this job is allowed: its own, or its handler's
    setting), `lease_id` (unique to this attempt: name scratch files with it so two runs of
    one job never share one) and `logger` (a logger whose records carry job_id, job_type
    and attempt).

    `fetch_allow`: the hosts and networks the worker's operator allows a user-given URL
    to reach although they are private (`jobcontrol-worker --fetch-allow`); a handler
    that fetches URLs from payloads connects through `jobcontrol.worker.fetch_guard`
    with it, as `media.fetch` does.

    Progress: `report_progress(percent, stage=None, message=None)`, cheap and safe from
    any thread; a stage left out keeps the last one.

    Cancellation (a CancelJob, the worker shutting down, the attempt's timeout, or the
    worker losing the job's lease): `cancelled` is True once the handler should stop,
    `raise_if_cancelled()` raises `JobCancelled` then, `await wait_cancelled()` returns
    then, and `await sleep(seconds)` sleeps but raises `JobCancelled` as soon as the job
    is stopped. An async handler's task is cancelled too (`asyncio.CancelledError` at
    its current await); a plain function runs in a thread and must check `cancelled`.

    Build one in a unit test with `jobcontrol.worker.testing`, never by hand.
    """

    def __init__(
        self,
        job: Job,
        *,
        stop: StopSignal,
        on_progress: Callable[[Progress], None],
        max_attempts: int | None = None,
        fetch_allow: FetchAllowList | None = None,
    ) -> None:
        self._job = job
        self._stop = stop
        self._on_progress = on_progress
        self._max_attempts = max_attempts or job.max_attempts
        self._fetch_allow = fetch_allow or FetchAllowList()
        self._last_stage = job.progress.stage
        self._logger: _JobLogger | None = None  # on first use: most handlers log nothing

    # ---- the job -------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def job_type(self) -> str:
        return self._job.type

    @property
    def payload(self) -> Mapping[str, Any]:
        return self._job.payload

    @property
    def labels(self) -> Mapping[str, str]:
        return self._job.labels

    @property
    def attempt(self) -> int:
        return self._job.attempt

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    @property
    def fetch_allow(self) -> FetchAllowList:
        return self._fetch_allow

    @property
    def lease_id(self) -> str:
        return self._job.lease_id or ""

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        if self._logger is None:
            job = self._job
            self._logger = _JobLogger(
                logging.getLogger(f"jobcontrol.handler.{job.type}"),
                {"job_id": job.id, "job_type": job.type, "attempt": job.attempt},
            )
        return self._logger

    # ---- progress ------------------------------------------------------------------

    def report_progress(
        self, percent: float, stage: str | None = None, message: str | None = None
    ) -> None:
        """Record progress (0-100). Cheap: stores at most a few writes per second."""
        if stage is not None:
            self._last_stage = stage
        self._on_progress(
            Progress(
                percent=float(min(100.0, max(0.0, percent))),
                stage=self._last_stage[:MAX_STAGE_LENGTH],
                message=(message or "")[:MAX_PROGRESS_MESSAGE_LENGTH],
            )
        )

    # ---- cancellation --------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the handler should stop (cancellation, shutdown, timeout, lost
        lease)."""
        return self._stop.is_set

    def raise_if_cancelled(self) -> None:
        if self._stop.is_set:
            reason = self._stop.reason
            raise JobCancelled(reason.value if reason else "cancelled")

    async def wait_cancelled(self) -> None:
        await self._stop.wait()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise JobCancelled at once if the job is stopped meanwhile."""
        await asyncio.wait((self._stop.future,), timeout=max(0.0, seconds))
        self.raise_if_cancelled()


class _JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Names the job in each message (for text logs) and in its fields (for JSON)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"job {extra['job_id']}: {msg}", kwargs


class JobRun:
    """The runtime's side of one running job: its lease, its stop signal and its progress
    writer. The handler gets only `context`."""

    def __init__(
        self,
        job: Job,
        store: JobStore,
        loop: asyncio.AbstractEventLoop,
        *,
        max_attempts: int | None = None,
        progress_episode: Episode | None = None,
        fetch_allow: FetchAllowList | None = None,
    ) -> None:
        assert job.lease_id is not None
        self.job = job
        self.lease_id = job.lease_id
        self.lease_lost = False
        self._store = store
        self._loop = loop
        self._stop = StopSignal(loop)
        self.context = JobContext(
            job,
            stop=self._stop,
            on_progress=self._offer,
            max_attempts=max_attempts,
            fetch_allow=fetch_allow,
        )
        self._pending: Progress | None = None
        self._writer: asyncio.Task[None] | None = None  # from the first update on
        self._progress_wakeup = asyncio.Event()
        self._last_write = 0.0
        self._writer_closing = False
        self._writer_wakeup = asyncio.Event()  # closing, or a backoff cut short
        # Shared by every job of a worker: one outage is one episode in the log.
        self._progress_episode = progress_episode or Episode("progress writes")
        self._progress_backoff = Backoff(base=0.25, cap=5.0)
        self._retry_delay = 0.0

    # ---- stopping ------------------------------------------------------------------

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop.reason

    def request_stop(self, reason: StopReason) -> None:
        """Ask the handler to stop."""
        self._stop.request(reason)

    @property
    def stopped(self) -> asyncio.Future[None]:
        """Done once a stop is requested (`StopSignal.future`: never cancel it)."""
        return self._stop.future

    def lose_lease(self) -> None:
        """The store no longer holds our lease: stop the handler and write nothing more."""
        self.lease_lost = True
        self.request_stop(StopReason.LEASE_LOST)

    # ---- progress ------------------------------------------------------------------

    def _offer(self, progress: Progress) -> None:
        if _running_loop() is self._loop:
            self._set_pending(progress)
        else:
            self._loop.call_soon_threadsafe(self._set_pending, progress)

    def _set_pending(self, progress: Progress) -> None:
        self._pending = progress
        self._progress_wakeup.set()
        if self._writer is None and not self._writer_closing:
            self._writer = self._loop.create_task(
                self._write_progress(), name=f"progress-{self.job.id}"
            )

    async def _write_progress(self) -> None:
        """The writer task, from the first update until `close_progress`; a job that
        reports none has none. A write in flight is never cut short (the runtime stops
        the writer only between writes), so the last update cannot be taken and then
        lost."""
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

    async def close_progress(self) -> None:
        """Stop the writer once its write in flight (if any) is done. What is still
        pending is written by `flush_progress`, before the job's outcome."""
        self._writer_closing = True
        self._writer_wakeup.set()
        self._progress_wakeup.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    def cancel_progress(self) -> None:
        """Stop the writer now, mid-write if need be (the job's task is ending)."""
        self._writer_closing = True
        if self._writer is not None:
            self._writer.cancel()

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
            await self._store.report_progress(
                job_id=self.job.id, lease_id=self.lease_id, progress=progress
            )
        except LeaseLost:
            self.lose_lease()
            return
        except InvalidArgument as error:
            log.warning("progress of job %s refused: %s", self.job.id, error.message)
            return
        except BaseException:
            if self._pending is None:
                self._pending = progress
            raise
        self._progress_episode.succeeded()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
