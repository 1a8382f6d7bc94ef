"""The Python client, both flavours, against real server processes: every method, the
typed errors each status maps to, auth, TLS, deadlines and retries on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.client import (
    AlreadyExists,
    AsyncJobControlClient,
    Backoff,
    DeadlineExceeded,
    EventKind,
    InvalidArgument,
    InvalidTransition,
    JobNotFound,
    JobSpec,
    JobState,
    TlsOptions,
    Unauthenticated,
    Unavailable,
    WorkerState,
    status_name,
)
from jobcontrol.jobs import Job
from jobcontrol.store.sqlite import SqliteJobStore
from tests.clients.conftest import MakeClient, Records, server_dir
from tests.conftest import ServerProcess, free_port, start_server, wait_until
from tests.server.test_auth_tls import make_certs

QUICK = Backoff(initial=0.05, maximum=0.5, max_attempts=200)  # about a minute of retries
NEVER_CLAIMED = timedelta(hours=1)  # the in-process worker leaves such jobs PENDING


def unique() -> str:
    return uuid.uuid4().hex[:12]


def finished(client: Any, job_id: str) -> Job:
    return wait_until(
        lambda: (job := client.get(job_id)).is_terminal and job, timeout=30, what="the job"
    )


# ---- every method ----------------------------------------------------------------------


def test_submit_returns_the_stored_job_with_every_option(client: Any):
    run_after = datetime.now(UTC) + timedelta(hours=2)
    key = f"key-{unique()}"

    job = client.submit(
        "demo.sleep",
        {"seconds": 0.5, "note": "x"},
        priority=7,
        idempotency_key=key,
        run_after=run_after,
        max_attempts=5,
        timeout=90,
        labels={"team": "audio"},
    )

    assert job.state is JobState.PENDING
    assert job.type == "demo.sleep"
    assert job.payload == {"seconds": 0.5, "note": "x"}
    assert (job.priority, job.max_attempts, job.attempt) == (7, 5, 0)
    assert job.labels == {"team": "audio"}
    assert job.timeout == timedelta(seconds=90)
    assert job.run_after == run_after
    assert job.idempotency_key == key
    assert job.create_time.tzinfo is not None
    assert client.cancel(job.id).state is JobState.CANCELLED


def test_submit_with_a_delay_schedules_it_later(client: Any):
    job = client.submit("demo.sleep", delay=timedelta(minutes=30))

    assert job.run_after - job.create_time == timedelta(minutes=30)
    client.cancel(job.id)


def test_submit_with_the_same_idempotency_key_returns_the_first_job(client: Any):
    key = f"key-{unique()}"
    first = client.submit("demo.sleep", {"n": 1}, idempotency_key=key, delay=NEVER_CLAIMED)

    again = client.submit("demo.sleep", {"n": 1}, idempotency_key=key, delay=NEVER_CLAIMED)

    assert again.id == first.id
    client.cancel(first.id)


def test_submit_many_returns_the_jobs_in_request_order(client: Any):
    label = {"batch": unique()}
    specs = [
        JobSpec(type="demo.sleep", priority=p, labels=label, delay=NEVER_CLAIMED) for p in (3, 1, 2)
    ]

    jobs = client.submit_many(specs)

    assert [j.priority for j in jobs] == [3, 1, 2]
    assert len({j.id for j in jobs}) == 3
    assert all(j.state is JobState.PENDING for j in jobs)


def test_get_returns_the_job_with_its_queue_position_while_pending(client: Any):
    job_type = f"test.queue{unique()}"  # no worker handles it: it stays PENDING
    first = client.submit(job_type)
    second = client.submit(job_type)

    assert client.get(first.id).queue_position == 0
    assert client.get(second.id).queue_position == 1
    assert client.get(second.id).id == second.id


def test_list_iterates_every_page_newest_first(client: Any):
    label = {"page-test": unique()}
    submitted = [
        client.submit("demo.sleep", labels=label, delay=NEVER_CLAIMED).id for _ in range(7)
    ]

    listed = [job.id for job in client.list(labels=label, page_size=2)]

    assert listed == list(reversed(submitted))


def test_list_filters_by_state_and_type(client: Any):
    label = {"filter-test": unique()}
    kept = client.submit("demo.sleep", labels=label, delay=NEVER_CLAIMED)
    cancelled = client.submit("demo.sleep", labels=label, delay=NEVER_CLAIMED)
    client.cancel(cancelled.id)
    other_type = client.submit(f"test.other{unique()}", labels=label)

    pending_sleeps = client.list(states=["pending"], types=["demo.sleep"], labels=label)
    assert [j.id for j in pending_sleeps] == [kept.id]
    by_state = client.list(states=[JobState.CANCELLED], labels=label)
    assert [j.id for j in by_state] == [cancelled.id]
    assert {j.id for j in client.list(labels=label)} == {kept.id, cancelled.id, other_type.id}


def test_watch_yields_the_snapshot_then_every_change_until_the_terminal_event(client: Any):
    # Due a second from now, so the watch is nearly always open before a worker starts
    # it; a snapshot taken after the start (a slow machine) must then show it running.
    job = client.submit("demo.sleep", {"seconds": 0.3, "steps": 3}, delay=timedelta(seconds=1))

    events = list(client.watch(job.id))

    assert events[0].kind is EventKind.SNAPSHOT
    assert events[-1].kind is EventKind.SUCCEEDED
    assert events[-1].job.state is JobState.SUCCEEDED
    assert events[-1].job.result == {"slept_seconds": 0.3, "steps": 3, "attempt": 1}
    kinds = [e.kind for e in events]
    if events[0].job.state is JobState.PENDING:
        assert EventKind.STARTED in kinds
    else:
        assert events[0].job.state is JobState.RUNNING
        assert EventKind.STARTED not in kinds
    assert EventKind.PROGRESS in kinds
    stored = [e.sequence for e in events if e.kind is not EventKind.QUEUE_POSITION]
    assert stored == sorted(set(stored))
    assert all(e.job.id == job.id for e in events)


def test_watch_with_after_sequence_replays_the_history_of_a_finished_job(client: Any):
    job = client.submit("demo.sleep", {"seconds": 0, "steps": 0})
    finished(client, job.id)

    events = list(client.watch(job.id, after_sequence=0))

    assert events[0].kind is EventKind.SUBMITTED
    assert events[1].kind is EventKind.STARTED
    assert events[-1].kind is EventKind.SUCCEEDED
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))


def test_cancel_is_idempotent_and_records_the_reason(client: Any):
    job = client.submit("demo.sleep", delay=NEVER_CLAIMED)

    cancelled = client.cancel(job.id, reason="not needed")
    again = client.cancel(job.id, reason="twice")

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.cancel_reason == "not needed"
    assert again.state is JobState.CANCELLED
    assert again.update_time == cancelled.update_time


def test_retry_runs_a_cancelled_job_again(client: Any):
    job = client.submit("demo.sleep", delay=NEVER_CLAIMED)
    client.cancel(job.id)

    retried = client.retry(job.id)

    assert retried.state is JobState.PENDING
    assert retried.end_time is None
    assert finished(client, job.id).state is JobState.SUCCEEDED


def test_workers_lists_the_in_process_worker(client: Any):
    workers = client.workers()

    assert len(workers) == 1
    worker = workers[0]
    assert worker.state is WorkerState.ACTIVE
    assert {"demo.sleep", "audio.transcode"} <= set(worker.job_types)
    assert worker.pid > 0
    assert worker.heartbeat_time.tzinfo is not None
    assert [w.id for w in client.workers(include_stopped=True)] == [worker.id]


# ---- numbers, submit warnings, the jobs feed --------------------------------------------


def test_whole_numbers_come_back_as_int_and_the_rest_as_float(
    clients: MakeClient, numbers_server: ServerProcess
):
    client = clients(numbers_server.address)
    payload = {"steps": 4, "ratio": 0.25, "list": [1, 2.5, {"n": 7}]}

    job = finished(client, client.submit("numbers.sizes", payload).id)
    events = list(client.watch(job.id))
    listed = next(iter(client.list(types=["numbers.sizes"])))

    assert job.state is JobState.SUCCEEDED, job.error
    result = job.result or {}
    assert result["bytes"] == 160514
    assert type(result["bytes"]) is int
    assert type(result["negative"]) is int
    assert result["nested"] == {"counts": [1, 2, {"deep": 3}], "half": 1.5}
    assert [type(n) for n in result["nested"]["counts"][:2]] == [int, int]
    assert type(result["nested"]["counts"][2]["deep"]) is int
    assert type(result["ratio"]) is float
    assert type(result["nested"]["half"]) is float
    # Past 2**53 a double may not be the integer that was sent: it stays a float.
    assert type(result["huge"]) is float
    assert result["echo"] == payload
    assert type(job.payload["steps"]) is int
    assert type(job.payload["list"][2]["n"]) is int
    assert type(job.payload["list"][1]) is float
    assert type((events[-1].job.result or {})["bytes"]) is int
    assert type((listed.result or {})["bytes"]) is int


def test_submit_says_when_no_live_worker_serves_the_type(client: Any):
    job_type = f"test.nobody{unique()}"

    job = client.submit(job_type)
    served = client.submit("demo.sleep", delay=NEVER_CLAIMED)
    batch = client.submit_many([JobSpec(type=job_type), JobSpec(type=job_type)])

    assert job.created
    assert len(job.warnings) == 1
    assert job_type in job.warnings[0]
    assert client.get(job.id).unserved
    assert served.warnings == ()
    assert not client.get(served.id).unserved
    assert len(batch.warnings) == 1  # one line per problem, not per job
    assert job_type in batch.warnings[0]
    assert [j.type for j in batch] == [job_type, job_type]
    client.cancel(served.id)


def test_submit_with_a_repeated_idempotency_key_is_not_created(client: Any):
    key = f"key-{unique()}"
    first = client.submit("demo.sleep", idempotency_key=key, delay=NEVER_CLAIMED)

    again = client.submit("demo.sleep", idempotency_key=key, delay=NEVER_CLAIMED)

    assert (first.created, again.created) == (True, False)
    assert isinstance(again, Job)
    client.cancel(first.id)


def test_watch_jobs_yields_every_change_to_matching_jobs(client: Any):
    label = {"feed": unique()}
    marker = client.submit("demo.sleep", labels=label, delay=NEVER_CLAIMED)
    history = client.watch(marker.id, after_sequence=0)
    since = next(history).sequence  # the marker's SUBMITTED: the feed replays what follows
    history.close()
    other = client.submit("demo.sleep", {"seconds": 0}, labels={"feed": "other"})
    job = client.submit("demo.sleep", {"seconds": 0.1, "steps": 1}, labels=label)

    kinds = []
    for event in client.watch_jobs(labels=label, after_sequence=since):
        assert event.job.id == job.id  # neither the other label nor the marker's past
        kinds.append(event.kind)
        if event.job.is_terminal:
            break

    assert kinds[0] is EventKind.SUBMITTED
    assert EventKind.STARTED in kinds
    assert kinds[-1] is EventKind.SUCCEEDED
    finished(client, other.id)
    client.cancel(marker.id)


# ---- errors ----------------------------------------------------------------------------


def test_an_unknown_job_is_job_not_found_naming_it(client: Any):
    missing = str(uuid.uuid4())

    for call in (client.get, client.cancel, client.retry, lambda i: next(client.watch(i))):
        with pytest.raises(JobNotFound) as raised:
            call(missing)
        assert raised.value.job_id == missing
        assert missing in raised.value.message
        assert status_name(raised.value) == "NOT_FOUND"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.get("not-a-uuid"), "job_id"),
        (lambda c: c.submit("demo.sleep", priority=5000), "priority"),
        (lambda c: c.submit("no spaces allowed"), "type"),
        (lambda c: c.submit("demo.sleep", max_attempts=500), "max_attempts"),
        (lambda c: next(c.list(page_size=-1)), "page_size"),
        (
            lambda c: c.submit_many([JobSpec(type="demo.sleep"), JobSpec(type="bad type")]),
            "requests[1].type",
        ),
    ],
)
def test_a_refused_field_is_invalid_argument_naming_the_field(client: Any, call: Any, field: str):
    with pytest.raises(InvalidArgument) as raised:
        call(client)

    assert raised.value.field == field
    assert raised.value.description
    assert raised.value.message.startswith(field)
    assert status_name(raised.value) == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"run_after": datetime.now(UTC), "delay": 5}, "delay"),  # a oneof: one would win
        ({"run_after": datetime(2030, 1, 1)}, "run_after"),  # naive: would be read as UTC
    ],
)
def test_what_the_wire_cannot_say_is_refused_before_sending(
    clients: MakeClient, client_log: Records, options: dict[str, Any], field: str
):
    client = clients(f"127.0.0.1:{free_port()}", retry=QUICK)  # nothing listens there

    with pytest.raises(InvalidArgument) as raised:
        client.submit("demo.sleep", idempotency_key="k", **options)

    assert raised.value.field == field
    assert status_name(raised.value) == "INVALID_ARGUMENT"
    assert client_log.messages("jobcontrol.client.backoff") == []  # never sent


def test_an_idempotency_key_reused_for_another_request_is_already_exists(client: Any):
    key = f"key-{unique()}"
    client.submit("demo.sleep", {"n": 1}, idempotency_key=key, delay=NEVER_CLAIMED)

    with pytest.raises(AlreadyExists) as raised:
        client.submit("demo.sleep", {"n": 2}, idempotency_key=key, delay=NEVER_CLAIMED)

    assert status_name(raised.value) == "ALREADY_EXISTS"
    assert raised.value.message


def test_a_transition_the_state_machine_refuses_is_invalid_transition(client: Any):
    done = client.submit("demo.sleep", {"seconds": 0, "steps": 0})
    finished(client, done.id)
    pending = client.submit("demo.sleep", delay=NEVER_CLAIMED)

    with pytest.raises(InvalidTransition) as cancel_refused:
        client.cancel(done.id)
    with pytest.raises(InvalidTransition) as retry_refused:
        client.retry(pending.id)

    assert status_name(cancel_refused.value) == "FAILED_PRECONDITION"
    assert "SUCCEEDED" in cancel_refused.value.message
    assert status_name(retry_refused.value) == "FAILED_PRECONDITION"


def test_without_the_token_every_call_is_unauthenticated(
    clients: MakeClient, auth_server: ServerProcess, auth_token: str
):
    anonymous = clients(auth_server.address)
    wrong = clients(auth_server.address, token="not-" + auth_token)

    for client in (anonymous, wrong):
        with pytest.raises(Unauthenticated) as raised:
            client.workers()
        assert status_name(raised.value) == "UNAUTHENTICATED"
        assert "authorization: Bearer" in raised.value.message
        with pytest.raises(Unauthenticated):
            next(client.watch(str(uuid.uuid4())))


def test_with_the_token_every_method_is_served(
    clients: MakeClient, auth_server: ServerProcess, auth_token: str
):
    client = clients(auth_server.address, token=auth_token)

    label = {"auth": unique()}
    job = client.submit("demo.sleep", labels=label)
    assert client.get(job.id).id == job.id
    assert [j.id for j in client.list(labels=label)] == [job.id]
    assert client.cancel(job.id).state is JobState.CANCELLED
    assert [e.kind for e in client.watch(job.id)] == [EventKind.SNAPSHOT]
    assert client.retry(job.id).state is JobState.PENDING
    assert client.workers() == []


def test_the_default_deadline_applies_to_unary_calls(clients: MakeClient):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        client = clients(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        started = time.monotonic()

        with pytest.raises(DeadlineExceeded) as raised:
            client.workers()

    assert time.monotonic() - started < 10
    assert status_name(raised.value) == "DEADLINE_EXCEEDED"


# ---- retries on UNAVAILABLE ------------------------------------------------------------


async def _create_job(store_path: Path) -> Job:
    store = await SqliteJobStore.open(store_path)
    try:
        return (await store.create_job(JobSpec(type="demo.sleep"))).job
    finally:
        await store.close()


@pytest.mark.parametrize("call", ["get", "submit with idempotency key", "list", "workers"])
def test_a_safe_call_is_retried_until_a_server_starting_late_answers(
    tmp_path: Path, clients: MakeClient, client_log: Records, call: str
):
    store_path = tmp_path / "jobs.db"
    job = asyncio.run(_create_job(store_path))
    port = free_port()
    client = clients(f"127.0.0.1:{port}", retry=QUICK)
    calls = {
        "get": lambda: client.get(job.id).id,
        "submit with idempotency key": lambda: client.submit("demo.sleep", idempotency_key="k").id,
        "list": lambda: [j.id for j in client.list()],
        "workers": lambda: client.workers() == [],
    }
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(calls[call])
        wait_until(
            lambda: client_log.messages("jobcontrol.client.backoff"),
            what="the first failed attempt",
        )
        assert not answer.done()
        server = start_server(
            server_dir(tmp_path, "late"),
            store_path=store_path,
            args=["--listen", f"127.0.0.1:{port}"],
        )
        try:
            result = answer.result(timeout=60)
        finally:
            server.stop()

    assert result
    if call == "get":
        assert result == job.id
    assert "UNAVAILABLE" in client_log.messages("jobcontrol.client.backoff")[0]


def test_a_submit_without_idempotency_key_is_never_retried(
    clients: MakeClient, client_log: Records
):
    client = clients(f"127.0.0.1:{free_port()}", retry=QUICK)

    with pytest.raises(Unavailable) as raised:
        client.submit("demo.sleep")

    assert status_name(raised.value) == "UNAVAILABLE"
    assert client_log.messages("jobcontrol.client.backoff") == []


def test_a_safe_call_gives_up_with_unavailable_after_its_attempts(
    clients: MakeClient, client_log: Records
):
    client = clients(
        f"127.0.0.1:{free_port()}", retry=Backoff(initial=0.01, maximum=0.02, max_attempts=3)
    )

    with pytest.raises(Unavailable) as raised:
        client.get(str(uuid.uuid4()))

    assert "failed to connect" in raised.value.message
    assert len(client_log.messages("jobcontrol.client.backoff")) == 2  # 3 attempts


# ---- TLS -------------------------------------------------------------------------------


def test_tls_with_the_servers_ca_and_mtls_with_a_client_certificate(
    tmp_path: Path, clients: MakeClient
):
    certs = make_certs(server_dir(tmp_path, "certs"))
    tls_args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    tls_server = start_server(server_dir(tmp_path, "tls"), args=tls_args)
    mtls_server = start_server(
        server_dir(tmp_path, "mtls"), args=[*tls_args, "--tls-client-ca", str(certs.ca)]
    )
    try:
        server_only = TlsOptions.from_files(ca=certs.ca)
        with_client_cert = TlsOptions.from_files(
            ca=certs.ca, cert=certs.client_cert, key=certs.client_key
        )
        no_retry = Backoff(max_attempts=1)

        assert clients(tls_server.address, tls=server_only).workers() == []
        assert clients(mtls_server.address, tls=with_client_cert).workers() == []
        with pytest.raises(Unavailable):
            clients(mtls_server.address, tls=server_only, retry=no_retry).workers()
        with pytest.raises(Unavailable):  # plaintext to a TLS server
            clients(tls_server.address, retry=no_retry).workers()
    finally:
        tls_server.stop()
        mtls_server.stop()


def test_a_client_certificate_without_its_key_is_refused():
    with pytest.raises(ValueError, match="go together"):
        TlsOptions(certificate_chain=b"cert")


# ---- asyncio specifics -----------------------------------------------------------------


async def test_async_client_closes_with_async_with_and_stops_a_watch_when_left(
    worker_server: ServerProcess,
):
    async with AsyncJobControlClient(worker_server.address) as client:
        job = await client.submit("demo.sleep", delay=NEVER_CLAIMED)
        watch = client.watch(job.id)
        first = await anext(watch)
        await watch.aclose()  # hangs up the stream; nothing is left running
        assert first.kind is EventKind.SNAPSHOT
        assert (await client.cancel(job.id)).state is JobState.CANCELLED
        listed = [j.id async for j in client.list(states=["cancelled"], page_size=1)]
        assert job.id in listed


async def test_async_watch_is_cancelled_by_its_task(worker_server: ServerProcess):
    async with AsyncJobControlClient(worker_server.address) as client:
        job = await client.submit("demo.sleep", delay=NEVER_CLAIMED)
        started = asyncio.Event()

        async def follow() -> None:
            async for _ in client.watch(job.id):
                started.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.cancel(job.id)
