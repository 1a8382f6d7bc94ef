"""`JobControlClient`: the blocking client, for scripts and threads."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

from jobcontrol.client import calls
from jobcontrol.client.base import BaseClient
from jobcontrol.client.calls import SubmitOptions, SubmittedJob, SubmittedJobs, UnaryCall
from jobcontrol.client.channel import open_channel
from jobcontrol.client.options import ClientOptions
from jobcontrol.client.watching import WatchResumption
from jobcontrol.jobs import Job, JobEvent, JobSpec, JobState
from jobcontrol.workers import Worker

T = TypeVar("T")


class JobControlClient(BaseClient[grpc.Channel]):
    """Blocking client of `jobcontrol.v1.JobControl`; use it as a context manager, or
    call `close()`. Failures raise the typed errors of `jobcontrol.errors` and
    `jobcontrol.client.errors`."""

    def _open_channel(self, options: ClientOptions) -> grpc.Channel:
        return open_channel(options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> JobControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> SubmittedJob:
        """Submit one job. Keyword options (`SubmitOptions`): `priority` (0-1000, higher
        first), `idempotency_key`, `run_after` (an aware datetime) or `delay`,
        `max_attempts`, `timeout` (longest one attempt may run), `labels`; spans as
        timedelta or seconds. With `idempotency_key` the call is safe to repeat (and is
        retried on UNAVAILABLE): the same request returns the first job. The job comes
        back with `created` and the server's `warnings` (such as that no live worker
        serves its type yet)."""
        spec = calls.make_spec(type, payload, **options)
        return self._unary(calls.submit_job(spec))

    def submit_many(self, specs: Iterable[JobSpec]) -> SubmittedJobs:
        """Submit up to 1,000 jobs all or nothing, in one store transaction; the list
        carries the server's `warnings` about the batch."""
        return self._unary(calls.submit_jobs(builtins.list(specs)))

    def get(self, job_id: str) -> Job:
        return self._unary(calls.get_job(job_id))

    def list(
        self,
        *,
        states: Iterable[JobState | str] = (),
        types: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetching pages of `page_size` (0: the
        server's default) as the iteration goes."""
        pages = calls.Pages(calls.make_filter(states, types, labels), page_size=page_size)
        while not pages.done:
            yield from pages.take(self._unary(pages.next_call()))

    def watch(self, job_id: str, *, after_sequence: int | None = None) -> Iterator[JobEvent]:
        """The job's events: a snapshot first (or, with `after_sequence`, the events
        after it), then every change, ending after the terminal event. Survives server
        restarts and dropped connections by resuming after the last event delivered."""
        return self._follow(self._resumption(job_id, after_sequence))

    def watch_jobs(
        self,
        *,
        types: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        after_sequence: int | None = None,
    ) -> Iterator[JobEvent]:
        """Every change to jobs of these types with these labels, as it happens (with
        `after_sequence`, the stored events after it first); never ends on its own.
        Survives dropped connections like `watch`. Filter by state on the events: a
        state filter would hide the change that takes a job out of it."""
        job_filter = calls.make_filter(types=types, labels=labels)
        return self._follow(self._feed(job_filter, after_sequence))

    def _follow(self, state: WatchResumption) -> Iterator[JobEvent]:
        while True:
            stream = self._open_watch(state)
            error: grpc.RpcError | None = None
            try:
                for message in stream:
                    event = state.accept(message)
                    if event is not None:
                        yield event
                    if state.finished:
                        return
            except grpc.RpcError as caught:
                error = caught
            finally:
                stream.cancel()
            time.sleep(state.reconnect_delay(error))

    def cancel(self, job_id: str, reason: str = "") -> Job:
        return self._unary(calls.cancel_job(job_id, reason))

    def retry(self, job_id: str) -> Job:
        return self._unary(calls.retry_job(job_id))

    def workers(self, include_stopped: bool = False) -> builtins.list[Worker]:
        return self._unary(calls.list_workers(include_stopped))

    def _unary(self, call: UnaryCall[T]) -> T:
        attempts = self._attempts(call)
        while True:
            try:
                return call.parse(self._send(call))
            except grpc.RpcError as error:
                time.sleep(attempts.after(error))
