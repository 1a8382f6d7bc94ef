"""Every RPC against a real server process, with its error paths and status codes."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ServerProcess

Stub = job_control_pb2_grpc.JobControlStub


def payload(**values: object) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def submit(stub: Stub, **fields: object) -> pb.Job:
    request = api.SubmitJobRequest(**{"type": "demo.sleep", **fields})  # type: ignore[arg-type]
    return stub.SubmitJob(request, timeout=5).job


def error_of(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    """The error a unary call raises, or a stream raises before its first message."""

    def first_answer() -> None:
        result = call(request, timeout=5)
        if hasattr(result, "__next__"):
            next(result)

    with pytest.raises(grpc.RpcError) as caught:
        first_answer()
    return caught.value


def field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "expected google.rpc.Status details"
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        fields.extend(v.field for v in bad_request.field_violations)
    return fields


# ---- SubmitJob / SubmitJobs ---------------------------------------------------------


def test_submit_returns_the_stored_job(stub: Stub):
    response = stub.SubmitJob(
        api.SubmitJobRequest(
            type="audio.transcode",
            payload=payload(input="in.wav", bitrate=128),
            priority=7,
            labels={"team": "a"},
            max_attempts=5,
            timeout=duration_pb2.Duration(seconds=60),
        ),
        timeout=5,
    )
    job = response.job
    assert response.created
    assert uuid.UUID(job.id).version == 7
    assert job.state == pb.JOB_STATE_PENDING
    assert dict(job.payload) == {"input": "in.wav", "bitrate": 128}
    assert (job.priority, job.max_attempts, dict(job.labels)) == (7, 5, {"team": "a"})
    assert job.timeout.seconds == 60
    assert job.create_time.seconds > 0


def test_submit_with_the_same_idempotency_key_returns_the_same_job(stub: Stub):
    request = api.SubmitJobRequest(type="demo.sleep", idempotency_key="order-17")
    first = stub.SubmitJob(request, timeout=5)
    again = stub.SubmitJob(request, timeout=5)
    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    different = api.SubmitJobRequest(type="demo.sleep", idempotency_key="order-17", priority=3)
    error = error_of(stub.SubmitJob, different)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "order-17" in error.details()


def test_submit_with_delay_or_run_after_schedules_it(stub: Stub):
    delayed = submit(stub, delay=duration_pb2.Duration(seconds=3600))
    assert delayed.run_after.seconds - delayed.create_time.seconds in (3599, 3600)
    at = timestamp_pb2.Timestamp(seconds=4_000_000_000)
    assert submit(stub, run_after=at).run_after.seconds == 4_000_000_000


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": ""}, "type"),
        ({"type": "has space"}, "type"),
        ({"priority": -1}, "priority"),
        ({"priority": 1001}, "priority"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"delay": duration_pb2.Duration(seconds=-5)}, "delay"),
        ({"delay": duration_pb2.Duration(seconds=5, nanos=-1)}, "delay"),
        ({"timeout": duration_pb2.Duration(seconds=-1)}, "timeout"),
        ({"run_after": timestamp_pb2.Timestamp(seconds=-99_999_999_999)}, "run_after"),
        ({"labels": {"no spaces allowed": "x"}}, "labels['no spaces allowed']"),
        ({"payload": payload(blob="x" * (1024 * 1024 + 1))}, "payload"),
    ],
)
def test_submit_refuses_invalid_fields_with_bad_request_details(
    stub: Stub, fields: dict[str, object], field: str
):
    error = error_of(stub.SubmitJob, api.SubmitJobRequest(**{"type": "demo.sleep", **fields}))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]
    assert error.details().startswith(field)


def test_submit_refuses_a_deeply_nested_payload(stub: Stub):
    nested: dict[str, object] = {}
    for _ in range(25):
        nested = {"n": nested}
    error = error_of(stub.SubmitJob, api.SubmitJobRequest(type="t", payload=payload(**nested)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested" in error.details()


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_submit_refuses_nan_or_infinity_in_the_payload(stub: Stub, number: float):
    # Found by the hostile-input fuzzer: protobuf's JSON conversion raised ValueError
    # for these, and the server answered INTERNAL.
    error = error_of(stub.SubmitJob, api.SubmitJobRequest(type="a", payload=payload(n=number)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["payload"]
    assert "NaN or Infinity" in error.details()


def test_submit_jobs_refuses_nan_in_a_payload_and_names_the_request(stub: Stub):
    # The fuzzer's exact input (it answered INTERNAL).
    request = api.SubmitJobsRequest(
        requests=[api.SubmitJobRequest(type="a", payload=payload(nan=math.nan))]
    )
    error = error_of(stub.SubmitJobs, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["requests[0].payload"]


def test_submit_jobs_is_all_or_nothing_and_names_the_bad_request(stub: Stub):
    requests = [api.SubmitJobRequest(type="demo.sleep") for _ in range(3)]
    requests.append(api.SubmitJobRequest(type="demo.sleep", priority=5000))
    error = error_of(stub.SubmitJobs, api.SubmitJobsRequest(requests=requests))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["requests[3].priority"]
    listed = stub.ListJobs(api.ListJobsRequest(), timeout=5)
    assert list(listed.jobs) == []


def test_submit_jobs_returns_jobs_in_order(stub: Stub):
    requests = [api.SubmitJobRequest(type="demo.sleep", priority=i) for i in range(10)]
    response = stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=5)
    assert [j.priority for j in response.jobs] == list(range(10))
    assert list(response.created) == [True] * 10


def test_submit_jobs_refuses_an_empty_or_oversized_batch(stub: Stub):
    assert error_of(stub.SubmitJobs, api.SubmitJobsRequest()).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    too_many = [api.SubmitJobRequest(type="t")] * 1001
    error = error_of(stub.SubmitJobs, api.SubmitJobsRequest(requests=too_many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000" in error.details()


# ---- GetJob / ListJobs ----------------------------------------------------------------


def test_get_job_includes_the_queue_position_while_pending(stub: Stub):
    first = submit(stub)
    second = submit(stub)
    got = stub.GetJob(api.GetJobRequest(job_id=second.id), timeout=5).job
    assert got.id == second.id
    assert got.HasField("queue_position")
    assert got.queue_position == 1
    cancelled = stub.CancelJob(api.CancelJobRequest(job_id=first.id), timeout=5).job
    assert not cancelled.HasField("queue_position")
    assert stub.GetJob(api.GetJobRequest(job_id=second.id), timeout=5).job.queue_position == 0


@pytest.mark.parametrize(
    ("job_id", "code"),
    [
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("not-an-id", grpc.StatusCode.INVALID_ARGUMENT),
        ("\x00" * 36, grpc.StatusCode.INVALID_ARGUMENT),
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_get_job_with_a_bad_or_unknown_id(stub: Stub, job_id: str, code: grpc.StatusCode):
    error = error_of(stub.GetJob, api.GetJobRequest(job_id=job_id))
    assert error.code() == code
    assert "job" in error.details()


def test_list_jobs_pages_with_opaque_tokens_and_filters(stub: Stub):
    ids = [submit(stub, labels={"batch": "b1"}).id for _ in range(7)]
    submit(stub, type="other.type")
    seen: list[str] = []
    token = ""
    request_filter = api.JobFilter(labels={"batch": "b1"}, states=[pb.JOB_STATE_PENDING])
    while True:
        page = stub.ListJobs(
            api.ListJobsRequest(filter=request_filter, page_size=3, page_token=token), timeout=5
        )
        seen.extend(j.id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids, reverse=True)
    by_type = stub.ListJobs(
        api.ListJobsRequest(filter=api.JobFilter(types=["other.type"])), timeout=5
    )
    assert [j.type for j in by_type.jobs] == ["other.type"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (api.ListJobsRequest(page_size=-5), "page_size"),
        (api.ListJobsRequest(page_token="bogus"), "page_token"),
        (
            api.ListJobsRequest(filter=api.JobFilter(states=[pb.JOB_STATE_UNSPECIFIED])),
            "filter.states",
        ),
        (api.ListJobsRequest(filter=api.JobFilter(states=[42])), "filter.states"),
        (api.ListJobsRequest(filter=api.JobFilter(types=["bad type"])), "filter.types"),
    ],
)
def test_list_jobs_refuses_bad_arguments(stub: Stub, request_: api.ListJobsRequest, field: str):
    error = error_of(stub.ListJobs, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [field]


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_list_jobs_refuses_a_token_of_deeply_nested_json(stub: Stub, depth: int):
    # Found by the hostile-input fuzzer (depth 1,000, the exact input): decoding the
    # token's JSON hit Python's recursion limit and the server answered INTERNAL.
    token = base64.urlsafe_b64encode(b"[" * depth).decode()
    error = error_of(stub.ListJobs, api.ListJobsRequest(page_token=token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["page_token"]


def test_list_jobs_refuses_a_token_reused_with_another_filter(stub: Stub):
    for _ in range(3):
        submit(stub)
    page = stub.ListJobs(api.ListJobsRequest(page_size=1), timeout=5)
    other = api.ListJobsRequest(
        filter=api.JobFilter(types=["demo.sleep"]), page_size=1, page_token=page.next_page_token
    )
    error = error_of(stub.ListJobs, other)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different filter" in error.details()


# ---- CancelJob / RetryJob / ListWorkers -----------------------------------------------


def test_cancel_then_retry_then_cancel_again(stub: Stub):
    job = submit(stub)
    cancelled = stub.CancelJob(
        api.CancelJobRequest(job_id=job.id, reason="no longer needed"), timeout=5
    )
    assert cancelled.job.state == pb.JOB_STATE_CANCELLED
    assert cancelled.job.cancel_reason == "no longer needed"
    again = stub.CancelJob(api.CancelJobRequest(job_id=job.id), timeout=5)
    assert again.job == cancelled.job
    retried = stub.RetryJob(api.RetryJobRequest(job_id=job.id), timeout=5)
    assert retried.job.state == pb.JOB_STATE_PENDING
    error = error_of(stub.RetryJob, api.RetryJobRequest(job_id=job.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only FAILED or CANCELLED" in error.details()


def test_cancel_and_retry_unknown_or_malformed_ids(stub: Stub):
    unknown = str(uuid.uuid4())
    assert error_of(stub.CancelJob, api.CancelJobRequest(job_id=unknown)).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert error_of(stub.RetryJob, api.RetryJobRequest(job_id=unknown)).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert error_of(stub.CancelJob, api.CancelJobRequest(job_id="x")).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_cancel_reason_too_long_is_invalid(stub: Stub):
    job = submit(stub)
    error = error_of(stub.CancelJob, api.CancelJobRequest(job_id=job.id, reason="r" * 2000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["reason"]


def test_list_workers_is_empty_without_workers(stub: Stub):
    assert list(stub.ListWorkers(api.ListWorkersRequest(), timeout=5).workers) == []


# ---- WatchJob / WatchJobs argument errors ---------------------------------------------


def test_watch_unknown_job_is_not_found_before_any_message(stub: Stub):
    error = error_of(stub.WatchJob, api.WatchJobRequest(job_id=str(uuid.uuid4())))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_watch_with_a_negative_sequence_is_invalid(stub: Stub):
    job = submit(stub)
    error = error_of(stub.WatchJob, api.WatchJobRequest(job_id=job.id, after_sequence=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.WatchJobs, api.WatchJobsRequest(after_sequence=-1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_jobs_with_a_bad_filter_is_invalid(stub: Stub):
    error = error_of(stub.WatchJobs, api.WatchJobsRequest(filter=api.JobFilter(states=[99])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_of_a_finished_job_sends_the_snapshot_and_ends(stub: Stub):
    job = submit(stub)
    stub.CancelJob(api.CancelJobRequest(job_id=job.id), timeout=5)
    events = list(stub.WatchJob(api.WatchJobRequest(job_id=job.id), timeout=5))
    assert [e.event.kind for e in events] == [pb.EVENT_KIND_SNAPSHOT]
    assert events[0].event.job.state == pb.JOB_STATE_CANCELLED


def test_oversized_messages_are_refused_not_crashing(stub: Stub):
    huge = api.SubmitJobRequest(type="t", payload=payload(blob="x" * (17 * 1024 * 1024)))
    error = error_of(stub.SubmitJob, huge)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert submit(stub).state == pb.JOB_STATE_PENDING  # the server is still fine


@pytest.mark.parametrize("method", ["GetJob", "SubmitJob", "WatchJob"])
def test_corrupt_request_bytes_are_invalid_argument(server: ServerProcess, method: str):
    with server.channel() as channel:
        if method == "WatchJob":
            call: Any = channel.unary_stream(f"/jobcontrol.v1.JobControl/{method}")
        else:
            call = channel.unary_unary(f"/jobcontrol.v1.JobControl/{method}")
        error = error_of(call, b"\xff\xff\xff\xff not protobuf")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid jobcontrol.v1.{method}Request" in error.details()
