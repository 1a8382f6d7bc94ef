"""Contract: listing with filters, stable order and opaque page tokens."""

from __future__ import annotations

import json

import pytest

from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store import JobFilter, paging
from jobcontrol.store.core import SqlJobStore
from jobcontrol.store.paging import PAGE_BYTES
from jobcontrol.store.protocol import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE


async def _submit(store: SqlJobStore, n: int, **spec: object) -> list[str]:
    results = await store.create_jobs(
        [JobSpec(**{"type": "t", **spec}) for _ in range(n)]  # type: ignore[arg-type]
    )
    return [r.job.id for r in results]


async def _all_pages(store: SqlJobStore, job_filter: JobFilter, page_size: int) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await store.list_jobs(job_filter=job_filter, page_size=page_size, page_token=token)
        ids.extend(j.id for j in page.jobs)
        if not page.next_page_token:
            return ids
        assert len(page.jobs) == page_size
        token = page.next_page_token


async def test_list_pages_through_every_job_newest_first(store: SqlJobStore):
    ids = await _submit(store, 23)
    listed = await _all_pages(store, JobFilter(), page_size=5)
    assert listed == sorted(ids, reverse=True)


async def test_pagination_stays_stable_while_jobs_are_inserted(store: SqlJobStore):
    before = await _submit(store, 30)
    first = await store.list_jobs(job_filter=JobFilter(), page_size=10)
    await _submit(store, 15)  # newer jobs land before the cursor, never inside later pages
    rest = await _all_pages_from(store, first.next_page_token, page_size=10)
    seen = [j.id for j in first.jobs] + rest
    assert seen == sorted(before, reverse=True)
    assert len(set(seen)) == len(seen)


async def _all_pages_from(store: SqlJobStore, token: str, *, page_size: int) -> list[str]:
    ids: list[str] = []
    while token:
        page = await store.list_jobs(job_filter=JobFilter(), page_size=page_size, page_token=token)
        ids.extend(j.id for j in page.jobs)
        token = page.next_page_token
    return ids


async def test_list_filters_by_state_type_and_labels(store: SqlJobStore):
    a = await _submit(store, 3, type="audio.transcode", labels={"team": "a", "env": "prod"})
    b = await _submit(store, 2, type="audio.transcode", labels={"team": "b"})
    c = await _submit(store, 4, type="demo.sleep", labels={"team": "a"})
    cancelled = await store.cancel_job(c[0])
    assert cancelled.state is JobState.CANCELLED

    async def ids(f: JobFilter) -> set[str]:
        return set(await _all_pages(store, f, page_size=2))

    assert await ids(JobFilter(types=frozenset({"audio.transcode"}))) == set(a + b)
    assert await ids(JobFilter(labels={"team": "a"})) == set(a + c)
    assert await ids(JobFilter(labels={"team": "a", "env": "prod"})) == set(a)
    assert await ids(JobFilter(labels={"team": "z"})) == set()
    assert await ids(JobFilter(states=frozenset({JobState.CANCELLED}))) == {c[0]}
    assert await ids(
        JobFilter(states=frozenset({JobState.PENDING}), types=frozenset({"demo.sleep"}))
    ) == set(c[1:])


async def test_list_shows_queue_positions_of_pending_jobs(store: SqlJobStore):
    ids = await _submit(store, 3)
    page = await store.list_jobs(job_filter=JobFilter())
    positions = {j.id: j.queue_position for j in page.jobs}
    assert positions == {ids[0]: 0, ids[1]: 1, ids[2]: 2}


@pytest.mark.parametrize(("asked", "expected"), [(0, DEFAULT_PAGE_SIZE), (5000, MAX_PAGE_SIZE)])
async def test_page_size_zero_means_default_and_large_is_capped(
    store: SqlJobStore, asked: int, expected: int
):
    await _submit(store, 1000)
    await _submit(store, 100)
    page = await store.list_jobs(job_filter=JobFilter(), page_size=asked)
    assert len(page.jobs) == expected
    assert page.next_page_token


async def test_negative_page_size_is_refused(store: SqlJobStore):
    with pytest.raises(InvalidArgument, match="between 0 and 1000, got -5"):
        await store.list_jobs(job_filter=JobFilter(), page_size=-5)


@pytest.mark.parametrize("token", ["garbage", "eyJ2IjogMn0", "%%%", "W" * 10_000 + "="])
async def test_malformed_page_token_is_refused(store: SqlJobStore, token: str):
    with pytest.raises(InvalidArgument) as caught:
        await store.list_jobs(job_filter=JobFilter(), page_token=token)
    assert caught.value.field == "page_token"


async def test_page_token_reused_with_another_filter_is_refused(store: SqlJobStore):
    await _submit(store, 5)
    page = await store.list_jobs(job_filter=JobFilter(), page_size=2)
    with pytest.raises(InvalidArgument, match="different filter"):
        await store.list_jobs(
            job_filter=JobFilter(types=frozenset({"t"})),
            page_size=2,
            page_token=page.next_page_token,
        )


async def test_last_page_has_an_empty_token(store: SqlJobStore):
    await _submit(store, 4)
    page = await store.list_jobs(job_filter=JobFilter(), page_size=4)
    assert len(page.jobs) == 4
    assert page.next_page_token == ""


async def test_pages_of_large_jobs_stop_by_bytes_and_continue_after_the_last_job(
    store: SqlJobStore,
):
    """Jobs of ~0.9 MiB payloads: 50 of them would be a 45 MiB page, past the 16 MiB
    message limit. Pages stop at PAGE_BYTES (by the generous estimate), hold at least
    one job, and together list every job once, newest first."""
    blob = "x" * (900 * 1024)
    ids = []
    for i in range(9):
        ids += await _submit(store, 1, payload={"i": i, "blob": blob})
    ids += await _submit(store, 3)  # small ones: the page after a big one fills up again
    listed: list[str] = []
    pages = []
    token = ""
    while True:
        page = await store.list_jobs(job_filter=JobFilter(), page_size=50, page_token=token)
        assert page.jobs
        pages.append(page)
        listed.extend(j.id for j in page.jobs)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert listed == sorted(ids, reverse=True)
    assert len(pages) > 2
    for page in pages:
        payload_bytes = sum(len(json.dumps(j.payload)) for j in page.jobs)
        assert len(page.jobs) == 1 or payload_bytes * 3 <= PAGE_BYTES
        assert payload_bytes < 8 * 1024 * 1024


async def test_one_job_bigger_than_the_byte_budget_still_gets_a_page(store: SqlJobStore):
    big = await _submit(store, 2, payload={"blob": "y" * (1000 * 1024)})
    first = await store.list_jobs(job_filter=JobFilter(), page_size=10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paging, "PAGE_BYTES", 1)  # every job alone is over it
        one = await store.list_jobs(job_filter=JobFilter(), page_size=10)
        assert [j.id for j in one.jobs] == [big[1]]
        rest = await store.list_jobs(
            job_filter=JobFilter(), page_size=10, page_token=one.next_page_token
        )
    assert [j.id for j in rest.jobs] == [big[0]]
    assert not rest.next_page_token
    assert [j.id for j in first.jobs] == [big[1], big[0]]
