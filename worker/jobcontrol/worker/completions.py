"""Group commit for successful results.

A busy worker finishes many jobs at once; writing each in its own transaction made the
store's write lock the limit of the whole worker. Results that arrive while a write is
in flight go together in the next one, so a busy worker pays one transaction for many
jobs and an idle one waits for nothing (there is no timer, only the write in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from jobcontrol.errors import InvalidArgument, LeaseLost
from jobcontrol.store import Completion, JobStore
from jobcontrol.store.protocol import MAX_BATCH_SIZE

_Pending = tuple[Completion, "asyncio.Future[None]"]


class CompletionWriter:
    def __init__(self, store: JobStore, *, max_batch: int = MAX_BATCH_SIZE) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def complete(self, *, job_id: str, lease_id: str, result: Mapping[str, Any]) -> None:
        """Record the result; raises what `JobStore.complete_job` raises for this job."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((Completion(job_id, lease_id, result), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="completions")
        return await future

    async def _write_queued(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                await self._write(batch)
            except BaseException as error:
                for _, future in batch + self._queue:
                    if not future.done():
                        future.set_exception(error)
                self._queue.clear()
                raise

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            recorded_all = await self._store.complete_jobs([c for c, _ in batch])
        except InvalidArgument:
            # One result the store refuses (too big, not JSON) must not sink the others:
            # write each alone, so only that job gets the error.
            for completion, future in batch:
                await _settle_alone(self._store, completion, future)
            return
        except Exception as error:  # the store is down: every job in the batch hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (completion, future), recorded in zip(batch, recorded_all, strict=True):
            if future.done():  # its job task was cancelled; the result is written anyway
                continue
            if recorded:
                future.set_result(None)
            else:
                future.set_exception(LeaseLost(completion.job_id, completion.lease_id))


async def _settle_alone(
    store: JobStore, completion: Completion, future: asyncio.Future[None]
) -> None:
    try:
        await store.complete_job(
            job_id=completion.job_id, lease_id=completion.lease_id, result=completion.result
        )
    except Exception as error:
        if not future.done():
            future.set_exception(error)
        return
    if not future.done():
        future.set_result(None)
