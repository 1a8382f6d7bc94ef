"""`AsyncJobControlClient`: the asyncio client, with the same methods as the blocking one."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

from jobcontrol.client import calls
from jobcontrol.client.base import BaseClient
from jobcontrol.client.calls import SubmitOptions, SubmittedJob, SubmittedJobs, UnaryCall
from jobcontrol.client.channel import open_aio_channel
from jobcontrol.client.options import ClientOptions
from jobcontrol.client.watching import WatchResumption
from jobcontrol.jobs import Job, JobEvent, JobSpec, JobState
from jobcontrol.workers import Worker

T = TypeVar("T")


class AsyncJobControlClient(BaseClient[grpc.aio.Channel]):
    """asyncio client of `jobcontrol.v1.JobControl`; create it inside a running event
    loop, and use it with `async with` or `await close()`. Failures raise the typed
    errors of `jobcontrol.errors` and `jobcontrol.client.errors`."""

    def _open_channel(self, options: ClientOptions) -> grpc.aio.Channel:
        return open_aio_channel(options)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncJobControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> SubmittedJob:
        """Submit one job; see `JobControlClient.submit`."""
        spec = calls.make_spec(type, payload, **options)
        return await self._unary(calls.submit_job(spec))

    async def submit_many(self, specs: Iterable[JobSpec]) -> SubmittedJobs:
        return await self._unary(calls.submit_jobs(builtins.list(specs)))

    async def get(self, job_id: str) -> Job:
        return await self._unary(calls.get_job(job_id))

    async def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        types: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[Job]:
        """Every matching job, newest first, page by page; see `JobControlClient.list`."""
        pages = calls.Pages(calls.make_filter(states, types, labels), page_size=page_size)
        while not pages.done:
            for job in pages.take(await self._unary(pages.next_call())):
                yield job

    async def watch(
        self, job_id: str, *, after_sequence: int | None = None
    ) -> AsyncIterator[JobEvent]:
        """The job's events until the terminal one, resuming across restarts; see
        `JobControlClient.watch`."""
        async for event in self._follow(self._resumption(job_id, after_sequence)):
            yield event

    async def watch_jobs(
        self,
        *,
        types: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        after_sequence: int | None = None,
    ) -> AsyncIterator[JobEvent]:
        """Every change to matching jobs, never ending; see `JobControlClient.watch_jobs`."""
        job_filter = calls.make_filter(types=types, labels=labels)
        async for event in self._follow(self._feed(job_filter, after_sequence)):
            yield event

    async def _follow(self, state: WatchResumption) -> AsyncIterator[JobEvent]:
        while True:
            stream = self._open_watch(state)
            error: grpc.RpcError | None = None
            try:
                async for message in stream:
                    event = state.accept(message)
                    if event is not None:
                        yield event
                    if state.finished:
                        return
            except grpc.RpcError as caught:
                error = caught
            finally:
                stream.cancel()
            await asyncio.sleep(state.reconnect_delay(error))

    async def cancel(self, job_id: str, reason: str = "") -> Job:
        return await self._unary(calls.cancel_job(job_id, reason))

    async def retry(self, job_id: str) -> Job:
        return await self._unary(calls.retry_job(job_id))

    async def workers(self, include_stopped: bool = False) -> builtins.list[Worker]:
        return await self._unary(calls.list_workers(include_stopped))

    async def _unary(self, call: UnaryCall[T]) -> T:
        attempts = self._attempts(call)
        while True:
            try:
                return call.parse(await self._send(call))
            except grpc.RpcError as error:
                await asyncio.sleep(attempts.after(error))
