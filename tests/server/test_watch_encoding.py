"""Each event is converted and serialized once, however many streams watch it: every
WatchJob and WatchJobs stream on it gets the same bytes, and both decode them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from jobcontrol import convert
from jobcontrol.jobs import EventKind, JobEvent, JobSpec, Progress
from jobcontrol.server import registration
from jobcontrol.server.admission import Admission, LoadLimits
from jobcontrol.server.calls import Calls
from jobcontrol.server.hub import EventHub
from jobcontrol.server.metrics import Metrics
from jobcontrol.server.service import JobControlService
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

WATCHERS = 20
DEADLINE = 10.0
METHOD = "/jobcontrol.v1.JobControl/"


async def test_watchers_of_one_event_share_one_conversion_and_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    conversions: Counter[EventKind] = Counter()
    convert_event = convert.event_to_proto

    def counted(event: JobEvent) -> pb.JobEvent:
        conversions[event.kind] += 1
        return convert_event(event)

    monkeypatch.setattr(convert, "event_to_proto", counted)
    metrics = Metrics()
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    hub = EventHub(store, metrics=metrics, tail_interval=0.01)
    server = grpc.aio.server()
    service = JobControlService(store, hub, metrics)
    registration.register(server, Calls(service, metrics, Admission(LoadLimits(), metrics)))
    port = server.add_insecure_port("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        job = (await store.create_job(JobSpec(type="t.shared"))).job
        (claimed,) = await store.claim_jobs(
            worker_id="w", types=["t.shared"], limit=1, lease_timeout=timedelta(minutes=5)
        )
        assert claimed.lease_id is not None
        await hub.start()  # after the job's start: the streams see only what follows
        await server.start()
        watch_job = _raw_stream(channel, "WatchJob", api.WatchJobRequest)
        watch_jobs = _raw_stream(channel, "WatchJobs", api.WatchJobsRequest)
        singles = [watch_job(api.WatchJobRequest(job_id=job.id)) for _ in range(WATCHERS)]
        filtered = [
            watch_jobs(api.WatchJobsRequest(filter=api.JobFilter(types=["t.shared"])))
            for _ in range(WATCHERS)
        ]
        for stream in singles:  # the snapshot: each WatchJob stream is subscribed
            first = api.WatchJobResponse.FromString(await _next(stream))
            assert first.event.kind == pb.EVENT_KIND_SNAPSHOT
        await _until(lambda: len(hub._filtered) == WATCHERS)
        conversions.clear()

        await store.report_progress(
            job_id=job.id, lease_id=claimed.lease_id, progress=Progress(42.0, "half")
        )
        hub.wake()
        received = await asyncio.gather(*(_next(s) for s in singles + filtered))

        assert conversions == {EventKind.PROGRESS: 1}
        assert len(set(received)) == 1
        as_single = api.WatchJobResponse.FromString(received[0]).event
        as_filtered = api.WatchJobsResponse.FromString(received[0]).event
        assert as_single == as_filtered
        assert as_single.kind == pb.EVENT_KIND_PROGRESS
        assert as_single.job.progress.percent == 42.0
        for stream in singles + filtered:
            stream.cancel()
    finally:
        await channel.close()
        await server.stop(None)
        await hub.close()
        await store.close()


def _raw_stream(
    channel: grpc.aio.Channel,
    name: str,
    request_type: type[api.WatchJobRequest | api.WatchJobsRequest],
) -> Callable[[Any], grpc.aio.UnaryStreamCall[Any, bytes]]:
    """A stream whose messages arrive as the bytes the server sent, undecoded."""
    return channel.unary_stream(  # type: ignore[no-any-return]
        METHOD + name, request_serializer=request_type.SerializeToString
    )


async def _next(stream: grpc.aio.UnaryStreamCall[Any, bytes]) -> bytes:
    message = await asyncio.wait_for(stream.read(), DEADLINE)
    assert isinstance(message, bytes), f"the stream ended: {await stream.code()}"
    return message


async def _until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
