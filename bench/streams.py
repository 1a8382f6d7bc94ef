"""Many WatchJob streams from this process, opened in waves.

gRPC's server core keeps only so many calls waiting for the application to take them
(`grpc.server.max_pending_requests`): at its default (1,000; hard limit 3,000) ~45-56%
of 10,000 streams opened at once got CANCELLED. The server now raises the limits to
20,000 / 30,000 (app.py) and takes such a burst whole; streams are still opened WAVE at
a time, each wave once the previous one has its snapshots, as clients arriving over a
few seconds would, so that the figures measure serving streams, not one burst.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

from bench import procs, rpc
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

WAVE = 1_000
STREAMS_PER_CONNECTION = 100

# Called with (stream index, event, time.time() of arrival) for every message.
OnEvent = Callable[[int, pb.JobEvent, float], None]


def add_levels_argument(parser: argparse.ArgumentParser, default: Sequence[int]) -> None:
    parser.add_argument(
        "--levels",
        type=lambda text: sorted(int(n) for n in text.split(",")),
        default=list(default),
        help=f"open streams at each step (default {','.join(map(str, default))})",
    )


def connections_for(streams: int) -> int:
    return max(1, min(200, -(-streams // STREAMS_PER_CONNECTION)))


class Streams:
    """Streams on `job_ids` (stream i watches job i mod len), on `stubs` round robin."""

    def __init__(
        self,
        stubs: Sequence[rpc.Stub],
        job_ids: Sequence[str],
        on_event: OnEvent | None = None,
    ) -> None:
        self._stubs = stubs
        self._job_ids = job_ids
        self.on_event = on_event
        self._tasks: list[asyncio.Task[None]] = []
        self.opened = 0  # streams that have had their snapshot
        self.received = 0  # messages, snapshots included
        self.ended = 0  # streams that ended (the job finished, or an error)
        self.errors: list[BaseException] = []

    def __len__(self) -> int:
        return len(self._tasks)

    async def _watch(self, index: int) -> None:
        stub = self._stubs[index % len(self._stubs)]
        job_id = self._job_ids[index % len(self._job_ids)]
        call = stub.WatchJob(api.WatchJobRequest(job_id=job_id))
        try:
            first = True
            async for response in call:
                arrived = time.time()
                self.received += 1
                if first:
                    self.opened += 1
                    first = False
                if self.on_event is not None:
                    self.on_event(index, response.event, arrived)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as error:
            self.errors.append(error)
            raise
        finally:
            self.ended += 1

    async def open(self, total: int, *, wait: float = rpc.WAIT) -> float:
        """Open streams until `total` are open; the seconds it took."""
        started = time.perf_counter()
        while len(self._tasks) < total:
            wave = min(WAVE, total - len(self._tasks))
            first = len(self._tasks)
            self._tasks += [asyncio.create_task(self._watch(i)) for i in range(first, first + wave)]
            target = len(self._tasks)
            await rpc.until(
                lambda: self.opened >= target or bool(self.errors),  # noqa: B023
                f"{target:,} streams to open",
                wait=wait,
            )
            if self.errors:
                raise RuntimeError(f"{len(self.errors)} watch streams failed: {self.errors[0]!r}")
        return time.perf_counter() - started

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


async def window(server: procs.Server, seconds: float) -> dict[str, float]:
    """What the server did over `seconds` of wall time: store calls per second (in all,
    and by operation), CPU use in percent of one core, and RSS at the end (MiB)."""
    calls, cpu, began = server.store_calls(), server.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    after, cpu_after, elapsed = server.store_calls(), server.cpu_seconds(), time.perf_counter()
    elapsed -= began
    rates = {op: (n - calls.get(op, 0.0)) / elapsed for op, n in after.items()}
    return {
        "store_calls_per_s": sum(rates.values()),
        **{f"calls.{op}": rate for op, rate in sorted(rates.items())},
        "cpu_percent": 100 * (cpu_after - cpu) / elapsed,
        "rss_mib": server.rss_bytes() / 2**20,
    }
