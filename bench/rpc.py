"""gRPC client helpers for the benchmarks: channels, job submission, and reading job
rows straight from a SQLite database file (`backends.Database.query` reads either
backend)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from bench import backends
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc

T = TypeVar("T")
Stub = job_control_pb2_grpc.JobControlStub
MAX_BATCH = 1_000  # SubmitJobs' limit
WAIT = 60.0


_RUNNER: asyncio.Runner | None = None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, but on one event loop for the whole process: gRPC's asyncio
    poller outlives a loop, and a second `asyncio.run` would have it call into the
    closed one ("Event loop is closed" noise)."""
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = asyncio.Runner()
    return _RUNNER.run(coroutine)


def channel(address: str) -> grpc.aio.Channel:
    """A channel with a connection of its own (not shared with other channels)."""
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
    )


@contextlib.asynccontextmanager
async def stubs(address: str, count: int = 1) -> AsyncIterator[list[Stub]]:
    """`count` stubs, each on its own connection, closed at the end."""
    channels = [channel(address) for _ in range(count)]
    try:
        yield [Stub(c) for c in channels]
    finally:
        for c in channels:
            await c.close()


def request(job_type: str = "demo.sleep", **payload: Any) -> api.SubmitJobRequest:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return api.SubmitJobRequest(type=job_type, payload=struct)


async def submit(stub: Stub, requests: Sequence[api.SubmitJobRequest]) -> list[str]:
    """Submit in SubmitJobs batches of up to 1,000; the job ids in order."""
    ids: list[str] = []
    for start in range(0, len(requests), MAX_BATCH):
        batch = requests[start : start + MAX_BATCH]
        response = await stub.SubmitJobs(api.SubmitJobsRequest(requests=batch), timeout=WAIT)
        ids += [job.id for job in response.jobs]
    return ids


def query(db_path: Path, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read a SQLite database file directly (read-only, beside whatever writes it)."""
    return backends.query_file(db_path, statement, params)


async def until(
    condition: Callable[[], bool], what: str, *, wait: float = WAIT, interval: float = 0.01
) -> None:
    """Check `condition` every `interval` seconds until it holds (at most `wait`)."""
    deadline = time.monotonic() + wait
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {wait:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
