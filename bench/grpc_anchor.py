"""The anchor for WatchJob fan-out: a bare grpc.aio server with nothing behind it.

`python -m bench.grpc_anchor WATCHERS UPDATES SPACING` serves WatchJob (same method
name, same response bytes as jobcontrol's) from a handler that yields a SNAPSHOT, then,
once WATCHERS streams are open, UPDATES progress messages SPACING seconds apart, each
serialized once and stamped with time.time() just before it is handed to the streams: no
store, no tailer, no conversion. A stream still sending when the next message arrives
takes only the newest, as a WatchJob reader behind has its progress coalesced. It prints
its port, then serves until killed. The same client measuring it as jobcontrol shows
what grpc.aio itself costs on this machine at this load.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

JOB_ID = "0190f0c0-0000-7000-8000-000000000000"
SETTLE = 0.5  # seconds between the last stream opening and the first update


def encoded(kind: pb.EventKind.ValueType, percent: float, stamp: float) -> bytes:
    progress = pb.Progress(percent=percent, stage="bench", message=f"{stamp:.6f}")
    job = pb.Job(id=JOB_ID, type="bench.anchor", state=pb.JOB_STATE_RUNNING, progress=progress)
    event = pb.JobEvent(sequence=round(percent * 10) + 1, kind=kind, job=job)
    return api.WatchJobResponse(event=event).SerializeToString()


async def serve(watchers: int, updates: int, spacing: float) -> None:
    loop = asyncio.get_running_loop()
    # The newest message, and the future completed when a newer one replaces it.
    current: tuple[bytes, asyncio.Future[None]] = (
        encoded(pb.EVENT_KIND_SNAPSHOT, 0.0, 0.0),
        loop.create_future(),
    )
    opened = 0
    all_opened = asyncio.Event()

    async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        nonlocal opened
        message, replaced = current
        yield message
        opened += 1
        if opened >= watchers:
            all_opened.set()
        while True:
            await replaced
            message, replaced = current
            yield message

    handler = grpc.method_handlers_generic_handler(
        "jobcontrol.v1.JobControl",
        {
            "WatchJob": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=bytes, response_serializer=bytes
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await all_opened.wait()
    await asyncio.sleep(SETTLE)
    started = time.monotonic()
    for index in range(1, updates + 1):
        delay = started + index * spacing - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        previous = current[1]
        percent = 100.0 * index / updates
        current = (encoded(pb.EVENT_KIND_PROGRESS, percent, time.time()), loop.create_future())
        previous.set_result(None)
    await server.wait_for_termination()


if __name__ == "__main__":
    count, total, every = sys.argv[1:4]
    asyncio.run(serve(int(count), int(total), float(every)))
