"""EventHub: one tailer per server process fans job events out to every watcher.

The tailer reads `job_events` after the last sequence it saw and hands each event to
the subscriptions that want it, so the store sees the same queries for one watcher or
ten thousand; with nobody subscribed it only follows the newest sequence, and with only
WatchJob watchers of a few jobs it reads just those jobs' events, more often
(`hot_interval`) while one of them runs: its worker, in another process, writes its
progress, and the server sees that only by tailing. Snapshots
for new watchers are loaded in batches, and queue positions of watched PENDING jobs are
refreshed for all of them in one query per tick. Jobs go out PENDING with `unserved`
set as the served types say (`served.ServedTypes`); the same tick tells a watcher of a
PENDING job when that flips.

Each subscription has a bounded buffer. A watcher that falls behind has its events
coalesced: if it had not read everything before the tailer's batch arrived, a newer
event of a job replaces the job's older ones still waiting, from that batch or an
earlier one (a reader keeping up gets every event). A WatchJob watcher loses only
progress and queue-position updates that way, never a state change; a WatchJobs watcher
gets each job's newest state and every terminal one, so its backlog is about one
message per job. When even that overflows the buffer, the subscription ends and the
watcher is told to resume from its last sequence.

Every subscription gets the same `Delivery` for an event, so the stream that sends it
first encodes it once for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

from jobcontrol.errors import StoreUnavailable
from jobcontrol.jobs import EventKind, Job, JobEvent, JobState
from jobcontrol.server.metrics import Metrics
from jobcontrol.server.served import ServedTypes, is_unserved, mark_event
from jobcontrol.store import JobFilter, JobStore, ReapResult, Submitted

log = logging.getLogger(__name__)

COALESCIBLE = frozenset({EventKind.PROGRESS, EventKind.QUEUE_POSITION})


class WatchEnded(Exception):
    """The subscription ended before the watcher did."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


OVERFLOW = "overflow"
# How many jobs' messages a WatchJobs reader may have waiting once coalesced (about one
# per job): a dashboard some seconds behind a burst of SubmitJobs batches stays
# connected, while one that has stopped for good holds a bounded share of memory (each
# waiting message costs a few hundred bytes and keeps its job's event alive).
BACKLOG_JOBS = 50_000
# With only WatchJob watchers of at most this many jobs, the tailer reads just their
# events (one index range per job); with more it reads every event, which then costs
# less than probing each job.
WATCHED_JOBS_READ_MAX = 1_000
# Reading only the watched jobs' events costs one indexed range per job, so while one of
# them is RUNNING the tailer reads HOT_SPEEDUP times as often: a watcher then waits a
# fraction of the tail interval for its worker's progress, and watchers of pending or
# finished jobs cost the store what they did.
HOT_SPEEDUP = 4
# While the store pushes notifications (PostgreSQL's LISTEN), each one wakes the tailer,
# which then reads only this often besides, in case one was missed.
PUSHED_TAIL_BACKSTOP = 1.0
SHUTDOWN = "shutdown"


def matches(job_filter: JobFilter, job: Job) -> bool:
    return (
        (not job_filter.states or job.state in job_filter.states)
        and (not job_filter.types or job.type in job_filter.types)
        and all(job.labels.get(k) == v for k, v in job_filter.labels.items())
    )


@dataclasses.dataclass(slots=True, eq=False)
class Delivery:
    """One event as the hub hands it to every subscription that wants it. `encoded`
    holds its wire form once a stream has made it, for the other streams to send:
    a thousand watchers of one job then cost one conversion, not a thousand."""

    event: JobEvent
    encoded: bytes | None = None


@dataclasses.dataclass(slots=True, eq=False)
class _Entry:
    delivery: Delivery
    live: bool = True


class Subscription:
    """What one watcher is owed: a bounded, coalescing buffer of events.

    A reader that had read everything when a fan-out began gets every event of that
    fan-out. One that had not is behind: it had a whole tail interval and did not keep
    up, so a new event of a job replaces that job's waiting events that it may replace
    (`_replaceable`), earlier fan-outs' and its own, and goes to the back of the buffer.
    The buffer thus stays in sequence order, which is what makes resuming from the last
    sequence read safe: whatever was replaced has a newer event after it.

    A WatchJob subscription (`job_id`) replaces only progress and queue positions, so
    its watcher sees every state change. A WatchJobs subscription (`job_filter`)
    replaces every event but a terminal one: its watcher gets each job's newest state
    and every terminal state, so what it waits for is about one message per job.

    Dropped entries stay in the deque, marked dead, until popped or compacted; dropping
    costs O(1) per event, so a fan-out of n events to a stalled reader costs O(n).
    """

    def __init__(
        self,
        *,
        job_id: str | None,
        job_filter: JobFilter | None,
        capacity: int,
        metrics: Metrics,
    ) -> None:
        self.job_id = job_id
        self.job_filter = job_filter
        self._capacity = capacity
        self._metrics = metrics
        self._buffer: deque[_Entry] = deque()
        self._live = 0
        # Per job, the live entries tracked, oldest first: a list, as most hold one entry
        # and an empty deque alone costs several times a one-entry list.
        self._waiting: dict[str, list[_Entry]] = {}
        self._batch = 0  # the fan-out the last push belonged to
        self._behind = False  # whether the reader had unread events when it began
        self._ready = asyncio.Event()
        self._ended: str | None = None
        self.last_job: Job | None = None
        self.last_sequence = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def wants(self, event: JobEvent) -> bool:
        if self.job_id is not None:
            return event.job.id == self.job_id
        return self.job_filter is None or matches(self.job_filter, event.job)

    def prime(self, snapshot: JobEvent) -> None:
        """Remember the job as the watcher last saw it, for queue-position updates."""
        if snapshot.sequence >= self.last_sequence:
            self.last_job = snapshot.job
            self.last_sequence = snapshot.sequence

    def _replaceable(self, event: JobEvent) -> bool:
        if event.kind in COALESCIBLE:
            return True
        return self.job_id is None and not event.job.is_terminal

    def push(self, delivery: Delivery, batch: int) -> None:
        """Add an event of fan-out number `batch`."""
        if self._ended is not None:
            return
        if batch != self._batch:  # no reader runs within a fan-out, so this is its start
            self._batch = batch
            self._behind = self._live > 0
        event = delivery.event
        if event.sequence >= self.last_sequence:
            self.last_job = event.job
            self.last_sequence = event.sequence
        entry = _Entry(delivery)
        if self.job_id is None or event.kind in COALESCIBLE:
            waiting = self._waiting.setdefault(event.job.id, [])
            if self._behind and waiting:
                self._drop_replaceable(waiting)
            waiting.append(entry)
        self._buffer.append(entry)
        self._live += 1
        if self._live > self._capacity:
            self._coalesce_all()
            if self._live > self._capacity:
                self.end(OVERFLOW)  # even one message per job is too many: it is stuck
                return
        if len(self._buffer) > 2 * self._capacity:
            self._buffer = deque(e for e in self._buffer if e.live)
        self._ready.set()

    def _drop_replaceable(self, waiting: list[_Entry], keep_last: bool = False) -> None:
        """Drop the job's waiting entries that a newer one replaces (all of them, or all
        but the newest)."""
        newest = waiting[-1] if keep_last else None
        kept: list[_Entry] = []
        dropped = 0
        for entry in waiting:
            if entry is newest or not self._replaceable(entry.delivery.event):
                kept.append(entry)
            else:
                entry.live = False
                dropped += 1
        if dropped:
            self._live -= dropped
            self._metrics.coalesced.inc(dropped)  # once: each inc takes a lock
            waiting[:] = kept

    def _coalesce_all(self) -> None:
        """Over capacity: whatever fan-outs left uncoalesced (the reader was keeping up
        when they began) is coalesced now, as if the reader had been behind."""
        for waiting in self._waiting.values():
            if len(waiting) > 1:
                self._drop_replaceable(waiting, keep_last=True)

    def end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
            self._buffer.clear()
            self._waiting.clear()
            self._ready.set()

    async def next(self) -> Delivery:
        while True:
            if self._ended is not None:
                raise WatchEnded(self._ended)
            while self._buffer:
                entry = self._buffer.popleft()
                if not entry.live:
                    continue
                self._live -= 1
                self._forget(entry)
                return entry.delivery
            self._ready.clear()
            await self._ready.wait()

    def _forget(self, entry: _Entry) -> None:
        """The entry is read: it is the oldest live one of its job, if tracked."""
        job_id = entry.delivery.event.job.id
        waiting = self._waiting.get(job_id)
        if waiting and waiting[0] is entry:
            del waiting[0]
            if not waiting:
                del self._waiting[job_id]


class EventHub:
    def __init__(
        self,
        store: JobStore,
        *,
        metrics: Metrics,
        tail_interval: float = 0.05,
        idle_interval: float = 1.0,
        position_interval: float = 1.0,
        capacity: int = 1024,
        backlog_jobs: int = BACKLOG_JOBS,
        read_limit: int = 1000,
        served: ServedTypes | None = None,
        hot_interval: float | None = None,
    ) -> None:
        """`hot_interval` defaults to the tail interval / HOT_SPEEDUP."""
        self._store = store
        self._served = served or ServedTypes(store)
        self._metrics = metrics
        self._tail_interval = tail_interval
        self._hot_interval = tail_interval / HOT_SPEEDUP if hot_interval is None else hot_interval
        self._idle_interval = idle_interval
        self._position_interval = position_interval
        self._capacity = capacity
        self._backlog_jobs = backlog_jobs
        self._read_limit = read_limit
        self._by_job: dict[str, set[Subscription]] = {}
        self._filtered: set[Subscription] = set()
        self._woken = asyncio.Event()
        self._last = 0
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_waiters: dict[str, list[asyncio.Future[JobEvent | None]]] = {}
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_read_at = -float("inf")
        self._batch = 0  # fan-outs so far; lets buffers tell a slow reader from a burst
        self._subscribed = 0  # subscriptions ever made; see _skip_unwatched
        self._unsubscribe_changes: Callable[[], None] | None = None

    @property
    def position(self) -> int:
        """The sequence of the last event fanned out."""
        return self._last

    async def start(self) -> None:
        self._last = await self._store.last_sequence()
        changes = self._store.changes
        if changes is not None:
            self._unsubscribe_changes = changes.subscribe(self._on_change)
        self._tasks = [
            asyncio.create_task(self._tail(), name="event-hub-tail"),
            asyncio.create_task(self._refresh_positions(), name="event-hub-positions"),
        ]

    async def close(self) -> None:
        """End every subscription (watchers get UNAVAILABLE and resume elsewhere)."""
        self._closed = True
        if self._unsubscribe_changes is not None:
            self._unsubscribe_changes()
        for sub in self._subscriptions():
            sub.end(SHUTDOWN)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_change(self, _: object) -> None:
        """A notification wakes the tailer only while someone watches: with nobody
        watching it follows the newest sequence once a second, and the first watcher
        wakes it anyway (a busy store sends one notification per commit)."""
        if self.watching:
            self._woken.set()

    def wake(self) -> None:
        """This process just wrote: tail now instead of at the next interval."""
        self._woken.set()

    def subscribe(
        self, *, job_id: str | None = None, job_filter: JobFilter | None = None
    ) -> Subscription:
        sub = Subscription(
            job_id=job_id,
            job_filter=job_filter,
            capacity=self._capacity if job_id is not None else self._backlog_jobs,
            metrics=self._metrics,
        )
        if self._closed:
            sub.end(SHUTDOWN)
            return sub
        self._subscribed += 1
        if not self.watching:
            self._woken.set()  # the tailer may be in its idle wait: tail often from now on
        if job_id is not None:
            self._by_job.setdefault(job_id, set()).add(sub)
        else:
            self._filtered.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.job_id is not None:
            subs = self._by_job.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[sub.job_id]
        else:
            self._filtered.discard(sub)

    def _subscriptions(self) -> Iterable[Subscription]:
        for subs in list(self._by_job.values()):
            yield from list(subs)
        yield from list(self._filtered)

    @property
    def watching(self) -> bool:
        return bool(self._by_job or self._filtered)

    async def snapshot(self, job_id: str) -> JobEvent | None:
        """The job's newest event (None if it does not exist). Concurrent callers share
        one store read."""
        future: asyncio.Future[JobEvent | None] = asyncio.get_running_loop().create_future()
        self._snapshot_waiters.setdefault(job_id, []).append(future)
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.create_task(self._load_snapshots())
        return await future

    async def _load_snapshots(self) -> None:
        while self._snapshot_waiters:
            # At most one read per tail interval: watchers arriving one by one (as a
            # thousand streams do) then share reads instead of costing one each.
            wait = self._snapshot_read_at + self._tail_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._snapshot_read_at = time.monotonic()
            waiters, self._snapshot_waiters = self._snapshot_waiters, {}
            try:
                events = await self._store.latest_events(list(waiters))
                served = await self._served.get()
            except Exception as error:  # handed to every waiter, which reports it
                for futures in waiters.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                continue
            for job_id, futures in waiters.items():
                for future in futures:
                    if not future.done():
                        event = events.get(job_id)
                        future.set_result(None if event is None else mark_event(event, served))

    def _dispatch(self, event: JobEvent) -> None:
        delivery = Delivery(event)
        for sub in list(self._by_job.get(event.job.id, ())):
            sub.push(delivery, self._batch)
        for sub in list(self._filtered):
            if sub.wants(event):
                sub.push(delivery, self._batch)

    async def _tail(self) -> None:
        failures = 0
        while True:
            self._woken.clear()
            # Reads start one interval apart, however long each takes: an event committed
            # just after a read began waits one interval, not an interval plus a round trip.
            read_at = time.monotonic()
            try:
                events, position = await self._read()
                if any(event.job.state is JobState.PENDING for event in events):
                    served = await self._served.get()
                    events = [mark_event(event, served) for event in events]
            except StoreUnavailable as error:
                failures += 1
                log.warning("event tail: %s", error.message)
                await asyncio.sleep(
                    min(5.0, self._tail_interval * 2**failures) * random.uniform(0.5, 1)
                )
                continue
            except Exception:
                # Not a known outage (a statement the database refused, a bug of ours):
                # said once with its traceback, then retried like one. Ending the task
                # would leave every watcher of this server waiting forever.
                failures += 1
                log.exception("event tail: reading the store failed; retrying")
                await asyncio.sleep(
                    min(5.0, self._tail_interval * 2**failures) * random.uniform(0.5, 1)
                )
                continue
            failures = 0
            now = time.time()
            self._batch += 1
            for event in events:
                self._dispatch(event)
                self._metrics.tail_lag.observe(max(0.0, now - event.time.timestamp()))
            self._last = max(self._last, position)
            if len(events) >= self._read_limit:
                await asyncio.sleep(0)
                continue
            wait = read_at + self._next_interval() - time.monotonic()
            if wait <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), wait)

    def _next_interval(self) -> float:
        """How long after this read the next one starts: the hot interval while a
        watched job runs, if only the watched jobs' events are read."""
        changes = self._store.changes
        if changes is not None and changes.live:
            return max(self._idle_interval, PUSHED_TAIL_BACKSTOP)
        if not self.watching:
            return self._idle_interval
        if self._reads_watched_jobs and self._watches_running_job():
            return self._hot_interval
        return self._tail_interval

    def _watches_running_job(self) -> bool:
        """Whether a watched job was RUNNING when its watchers last heard of it (one
        subscription per job is asked: they all get the same events)."""
        for subs in self._by_job.values():
            for sub in subs:
                if sub.last_job is not None and sub.last_job.state is JobState.RUNNING:
                    return True
                break
        return False

    @property
    def _reads_watched_jobs(self) -> bool:
        return not self._filtered and len(self._by_job) <= WATCHED_JOBS_READ_MAX

    async def _read(self) -> tuple[list[JobEvent], int]:
        """The next events to fan out, and the position after them."""
        if not self.watching:
            await self._skip_unwatched()
            return [], self._last
        if not self._reads_watched_jobs:
            events = await self._store.list_events(
                after_sequence=self._last, limit=self._read_limit
            )
            return events, events[-1].sequence if events else self._last
        return await self._read_watched_jobs()

    async def _read_watched_jobs(self) -> tuple[list[JobEvent], int]:
        """Only WatchJob watchers, of a few jobs: read just those jobs' events, up to the
        newest sequence, instead of decoding every job's for nobody (most of a busy
        server's CPU once anyone watches). The newest sequence is read before the jobs
        are listed: a watcher of a job left out subscribed after that read, so the
        snapshot or replay it reads next covers everything up to it."""
        through = await self._store.last_sequence()
        events = await self._store.list_events_of_jobs(
            sorted(self._by_job),
            after_sequence=self._last,
            through_sequence=through,
            limit=self._read_limit,
        )
        if len(events) >= self._read_limit:
            return events, events[-1].sequence
        return events, through

    async def _skip_unwatched(self) -> None:
        """Nobody is watching: move past the new events without reading them. Reading
        and decoding them cost a busy server (workers finishing thousands of jobs a
        second) about half its CPU for nothing. A subscription made while the position
        was being read may want those events, so then the position stays."""
        subscribed = self._subscribed
        last = await self._store.last_sequence()
        if subscribed == self._subscribed and not self.watching:
            self._last = max(self._last, last)

    async def _refresh_positions(self) -> None:
        while True:
            await asyncio.sleep(self._position_interval)
            watched = {
                sub.job_id: sub
                for subs in self._by_job.values()
                for sub in subs
                if sub.job_id is not None
                and sub.last_job is not None
                and sub.last_job.state is JobState.PENDING
            }
            if not watched:
                continue
            try:
                positions = await self._store.queue_positions(sorted(watched))
                served = await self._served.get()
            except StoreUnavailable as error:
                log.warning("queue positions: %s", error.message)
                continue
            except Exception:
                log.exception("queue positions: reading the store failed; retrying")
                continue
            now = datetime.now(UTC)
            self._batch += 1
            for job_id, position in positions.items():
                for sub in list(self._by_job.get(job_id, ())):
                    job = sub.last_job
                    if job is None or job.state is not JobState.PENDING:
                        continue
                    unserved = is_unserved(job, served)
                    if job.queue_position == position and job.unserved == unserved:
                        continue
                    event = JobEvent(
                        sequence=sub.last_sequence,
                        kind=EventKind.QUEUE_POSITION,
                        time=now,
                        job=dataclasses.replace(job, queue_position=position, unserved=unserved),
                    )
                    sub.push(Delivery(event), self._batch)


# The store calls that append job events: after one that changed something, the hub
# tails at once instead of at its next interval.
EVENT_WRITES = frozenset(
    {
        "create_job",
        "create_jobs",
        "cancel_job",
        "retry_job",
        "claim_jobs",
        "report_progress",
        "complete_job",
        "complete_jobs",
        "fail_job",
        "record_cancelled",
        "time_out_job",
        "release_job",
        "reap",
    }
)


def _changed(result: object) -> bool:
    """False for a write that did nothing: a repeated submit, an empty claim or reap, a
    batch of completions whose leases were all lost."""
    if isinstance(result, bool):
        return result
    if isinstance(result, Submitted):
        return result.created
    if isinstance(result, ReapResult):
        return result.total > 0
    if isinstance(result, list):
        return bool(result) and any(_changed(item) for item in result)
    return True


class _WakingStore:
    def __init__(self, inner: JobStore, hub: EventHub) -> None:
        self._inner = inner
        self._hub = hub

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in EVENT_WRITES:
            return attribute
        hub = self._hub

        @functools.wraps(attribute)
        async def write(*args: Any, **kwargs: Any) -> Any:
            result = await attribute(*args, **kwargs)
            if _changed(result):
                hub.wake()
            return result

        return write


def waking(store: JobStore, hub: EventHub) -> JobStore:
    """The same store, waking `hub` after every write that added job events: the one
    place where this process's own writes (its RPCs, reaper and in-process worker)
    reach its watchers without waiting for the tail interval."""
    return cast(JobStore, _WakingStore(store, hub))
