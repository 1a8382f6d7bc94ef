"""The `jobcontrol.v1.JobControl` service, behind the gRPC and the HTTP listener alike.

Handlers convert the request, call the store, and convert the answer back; they raise
domain errors, which `calls` turns into statuses for whichever protocol carried the
call. The store they get wakes the EventHub after each write (`hub.waking`), so
watchers in this process see it at once. Watch streams send the hub's events as bytes
encoded once for all streams (see `registration` and `http`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import struct_pb2

from jobcontrol import convert
from jobcontrol.errors import InvalidArgument, JobNotFound, UnservedJobType
from jobcontrol.ids import parse_id
from jobcontrol.jobs import EventKind, Job, JobEvent
from jobcontrol.server.hub import OVERFLOW, Delivery, EventHub, Subscription, WatchEnded
from jobcontrol.server.metrics import Metrics
from jobcontrol.server.served import ServedTypes, mark, mark_event, warnings
from jobcontrol.server.status import CallError
from jobcontrol.store import JobFilter, JobStore
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb
from jobcontrol.validation import validate_labels, validate_type

REPLAY_PAGE = 1000
# Converting a batch of 1,000 jobs holds the event loop for several milliseconds each
# way; in slices this big, streams and other calls get a turn in between.
CONVERT_SLICE = 100

T = TypeVar("T")
R = TypeVar("R")


async def _in_slices(items: Sequence[T], convert_one: Callable[[int, T], R]) -> list[R]:
    converted: list[R] = []
    for start in range(0, len(items), CONVERT_SLICE):
        if start:
            await asyncio.sleep(0)
        end = min(start + CONVERT_SLICE, len(items))
        converted += [convert_one(i, items[i]) for i in range(start, end)]
    return converted


class JobControlService:
    """`reject_unserved_types`: refuse submits of types no ACTIVE worker serves
    (FAILED_PRECONDITION) instead of accepting them with a warning."""

    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        metrics: Metrics,
        *,
        served: ServedTypes | None = None,
        reject_unserved_types: bool = False,
    ) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.served = served or ServedTypes(store)
        self.reject_unserved_types = reject_unserved_types

    async def _served_for(self, job_types: Sequence[str]) -> frozenset[str]:
        """The served types; raises UnservedJobType (a batch is refused whole) when
        this server refuses types nobody serves and some of these are."""
        served = await self.served.get()
        if self.reject_unserved_types:
            unserved = [t for t in dict.fromkeys(job_types) if t not in served]
            if unserved:
                raise UnservedJobType(unserved, served)
        return served

    async def SubmitJob(self, request: api.SubmitJobRequest) -> api.SubmitJobResponse:
        spec = convert.spec_from_proto(request)
        served = await self._served_for([spec.type])
        submitted = await self.store.create_job(spec)
        job = mark(submitted.job, served)
        return api.SubmitJobResponse(
            job=_answer(job, request.payload),
            created=submitted.created,
            warnings=warnings([job]),
        )

    async def SubmitJobs(self, request: api.SubmitJobsRequest) -> api.SubmitJobsResponse:
        specs = await _in_slices(
            request.requests,
            lambda i, r: convert.spec_from_proto(r, field_prefix=f"requests[{i}]."),
        )
        served = await self._served_for([spec.type for spec in specs])
        results = await self.store.create_jobs(specs)
        jobs = [mark(r.job, served) for r in results]
        return api.SubmitJobsResponse(
            jobs=await _in_slices(jobs, lambda i, job: _answer(job, request.requests[i].payload)),
            created=[r.created for r in results],
            warnings=warnings(jobs),
        )

    async def GetJob(self, request: api.GetJobRequest) -> api.GetJobResponse:
        job = await self.store.get_job(request.job_id)
        return api.GetJobResponse(job=await self._to_proto(job))

    async def ListJobs(self, request: api.ListJobsRequest) -> api.ListJobsResponse:
        page = await self.store.list_jobs(
            job_filter=convert.filter_from_proto(request.filter),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        served = await self.served.get()
        return api.ListJobsResponse(
            jobs=[convert.job_to_proto(mark(j, served)) for j in page.jobs],
            next_page_token=page.next_page_token,
        )

    async def CancelJob(self, request: api.CancelJobRequest) -> api.CancelJobResponse:
        job = await self.store.cancel_job(request.job_id, reason=request.reason)
        return api.CancelJobResponse(job=await self._to_proto(job))

    async def RetryJob(self, request: api.RetryJobRequest) -> api.RetryJobResponse:
        job = await self.store.retry_job(request.job_id)
        return api.RetryJobResponse(job=await self._to_proto(job))

    async def _to_proto(self, job: Job) -> pb.Job:
        return convert.job_to_proto(mark(job, await self.served.get()))

    async def ListWorkers(self, request: api.ListWorkersRequest) -> api.ListWorkersResponse:
        workers = await self.store.list_workers(include_stopped=request.show_stopped)
        return api.ListWorkersResponse(workers=[convert.worker_to_proto(w) for w in workers])

    async def WatchJob(
        self, request: api.WatchJobRequest
    ) -> AsyncIterator[api.WatchJobResponse | bytes]:
        job_id = parse_id(request.job_id)
        resume = request.HasField("after_sequence")
        if resume:
            _check_sequence(request.after_sequence)
        # Subscribe before reading the snapshot: every later change is then either in
        # the snapshot/replay or in the buffer, and the sequence check drops overlaps.
        sub = self.hub.subscribe(job_id=job_id)
        last = 0
        try:
            snapshot = await self.hub.snapshot(job_id)
            if snapshot is None:
                raise JobNotFound(job_id)
            sub.prime(snapshot)
            if resume:
                last = request.after_sequence
                async for event in self._replay(after=last, job_id=job_id):
                    yield api.WatchJobResponse(event=convert.event_to_proto(event))
                    last = event.sequence
                    if _ends_watch(event):
                        return
                if snapshot.job.is_terminal and last >= snapshot.sequence:
                    return
            else:
                first = dataclasses.replace(snapshot, kind=EventKind.SNAPSHOT)
                yield api.WatchJobResponse(event=convert.event_to_proto(first))
                if snapshot.job.is_terminal:
                    return
                last = snapshot.sequence
            while True:
                delivery = await sub.next()
                event = delivery.event
                if event.sequence <= last and event.kind is not EventKind.QUEUE_POSITION:
                    continue
                yield _encoded(delivery)
                last = max(last, event.sequence)
                if _ends_watch(event):
                    return
        except WatchEnded as ended:
            raise _stream_ended(ended, last) from None
        finally:
            self.hub.unsubscribe(sub)

    async def WatchJobs(
        self, request: api.WatchJobsRequest
    ) -> AsyncIterator[api.WatchJobsResponse | bytes]:
        job_filter = convert.filter_from_proto(request.filter)
        for job_type in job_filter.types:
            validate_type(job_type, field="filter.types")
        validate_labels(job_filter.labels, field="filter.labels")
        if request.HasField("after_sequence"):
            _check_sequence(request.after_sequence)
        sub = self.hub.subscribe(job_filter=job_filter)
        last = 0
        try:
            if request.HasField("after_sequence"):
                last = request.after_sequence
                async for event in self._replay(after=last, job_filter=job_filter, sub=sub):
                    yield api.WatchJobsResponse(event=convert.event_to_proto(event))
                    last = event.sequence
            while True:
                delivery = await sub.next()
                event = delivery.event
                if event.sequence <= last and event.kind is not EventKind.QUEUE_POSITION:
                    continue
                yield _encoded(delivery)
                last = max(last, event.sequence)
        except WatchEnded as ended:
            raise _stream_ended(ended, last, backlog_jobs=sub.capacity) from None
        finally:
            self.hub.unsubscribe(sub)

    async def _replay(
        self,
        *,
        after: int,
        job_id: str | None = None,
        job_filter: JobFilter | None = None,
        sub: Subscription | None = None,
    ) -> AsyncIterator[JobEvent]:
        """Stored events after `after`, page by page, until caught up with the store;
        PENDING jobs marked unserved as they are now."""
        while True:
            page = await self.store.list_events(
                after_sequence=after, limit=REPLAY_PAGE, job_id=job_id
            )
            served = await self.served.get()
            for event in page:
                if sub is None or sub.wants(event):
                    yield mark_event(event, served)
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].sequence


def _answer(job: Job, payload: struct_pb2.Struct) -> pb.Job:
    """The submitted job as a message, its payload copied from the request's Struct (in
    C) rather than rebuilt from the dict: for a payload of 50,000 fields that saves
    some 5 MiB of Python objects per job. It is the same payload: a new job stores the
    request's, and a repeated idempotency key matches only an identical request."""
    message = convert.job_to_proto(dataclasses.replace(job, payload={}))
    message.payload.CopyFrom(payload)
    return message


def _encoded(delivery: Delivery) -> bytes:
    """The event as a serialized WatchJobResponse, made by the first stream to send it.
    WatchJobsResponse is the same single field (`JobEvent event = 1`), so the same bytes
    serve both RPCs."""
    if delivery.encoded is None:
        message = api.WatchJobResponse(event=convert.event_to_proto(delivery.event))
        delivery.encoded = message.SerializeToString()
    return delivery.encoded


def _check_sequence(value: int) -> None:
    if value < 0:
        raise InvalidArgument("after_sequence", f"must not be negative, got {value}")


def _ends_watch(event: JobEvent) -> bool:
    return event.job.is_terminal and event.kind is not EventKind.QUEUE_POSITION


def _stream_ended(ended: WatchEnded, last: int, *, backlog_jobs: int = 0) -> CallError:
    """`backlog_jobs`: the WatchJobs bound, to name in its overflow message."""
    resume = f"resume with after_sequence={last}"
    if ended.reason == OVERFLOW and backlog_jobs:
        return CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the watcher fell too far behind: changes to more than {backlog_jobs:,} jobs "
            f"were waiting for it; {resume}",
        )
    if ended.reason == OVERFLOW:
        return CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the watcher fell too far behind and its buffer overflowed; {resume}",
        )
    return CallError(grpc.StatusCode.UNAVAILABLE, f"the server is shutting down; {resume}")
