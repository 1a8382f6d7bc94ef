"""Bounded load, on a real server process: calls and streams past their limits get
RESOURCE_EXHAUSTED naming the flag, health checks are never refused, refusals are
counted, and many clients sending the largest valid SubmitJobs at once get OK or
RESOURCE_EXHAUSTED, never anything else, while the server stays up."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2

from jobcontrol.server import admission
from jobcontrol.server.admission import MAX_CONCURRENT_READS
from jobcontrol.server.app import MAX_MESSAGE_BYTES, ServerConfig, serve
from jobcontrol.server.listen import ListenAddress
from jobcontrol.store import StoreConfig
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from tests.conftest import (
    free_port,
    health_status,
    peak_rss_bytes,
    read_metrics,
    rss_bytes,
    start_server,
)
from tests.polling import wait_until

MIB = 1024 * 1024
CLIENTS = 50
PAYLOAD_KEYS = 50_000  # ~0.7 MiB as JSON, ~1 MiB as a Struct: within every limit
# What the server may hold at once (see docs/ops.md, "Limits"): its start-up size; per
# client, what HTTP/2 lets it send before its call is read (a 64 KiB window) and the
# C-core's buffers for its connection; the few requests being read at once (two copies
# each, the C-core's and the bytes object); and one admitted largest batch being
# converted (some 30 times its size for payloads of many small fields). Nothing in it
# grows with each client's whole request.
PER_CLIENT = 1 * MIB
RECEIVED_COPIES = 2
WORKING_FACTOR = 36


def largest_submit_jobs() -> bytes:
    payload = struct_pb2.Struct()
    payload.update({f"k{i}": i for i in range(PAYLOAD_KEYS)})
    one = api.SubmitJobRequest(type="load.big", payload=payload)
    count = (MAX_MESSAGE_BYTES - 1024) // (one.ByteSize() + 8)
    body = api.SubmitJobsRequest(requests=[one] * count).SerializeToString()
    assert MAX_MESSAGE_BYTES - 2 * MIB < len(body) <= MAX_MESSAGE_BYTES
    return body


def test_fifty_clients_sending_the_largest_submit_jobs_at_once(tmp_path: Path):
    server = start_server(tmp_path)
    try:
        pid = server.process.pid
        start = peak_rss_bytes(pid)
        body = largest_submit_jobs()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        codes: Counter[str] = Counter()
        details: dict[str, str] = {}
        lock = threading.Lock()
        go = threading.Barrier(CLIENTS)

        def client() -> None:
            with grpc.insecure_channel(server.address, options=options) as channel:
                call = channel.unary_unary("/jobcontrol.v1.JobControl/SubmitJobs")
                go.wait()
                try:
                    call(body, timeout=120)
                    code, detail = "OK", ""
                except grpc.RpcError as error:
                    code, detail = error.code().name, error.details() or ""
            with lock:
                codes[code] += 1
                details.setdefault(code, detail)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        peak = peak_rss_bytes(pid)
        print(
            f"\n{CLIENTS} clients: {dict(codes)}; "
            f"server peak RSS {start / MIB:.0f} → {peak / MIB:.0f} MiB"
        )
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, details
        assert codes["OK"] >= 1
        if codes["RESOURCE_EXHAUSTED"]:
            assert "--max-request-bytes-in-flight" in details["RESOURCE_EXHAUSTED"]
        bound = (
            start
            + CLIENTS * PER_CLIENT
            + MAX_CONCURRENT_READS * RECEIVED_COPIES * len(body)
            + WORKING_FACTOR * len(body)
        )
        assert peak < bound, f"peak RSS {peak / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB"
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            job = stub.SubmitJob(api.SubmitJobRequest(type="load.after"), timeout=30).job
            assert stub.GetJob(api.GetJobRequest(job_id=job.id), timeout=30).job.id == job.id
        assert server.process.poll() is None
    finally:
        server.stop()


def test_rejected_large_requests_do_not_pile_up_in_memory(tmp_path: Path):
    """Each request is refused after it is read; its memory must go with the call, not
    wait for a full garbage collection (which large buffers alone never trigger)."""
    server = start_server(tmp_path)
    try:
        payload = struct_pb2.Struct()
        payload.update({"b": "x" * (4 * MIB)})
        bad = api.SubmitJobsRequest(
            requests=[
                api.SubmitJobRequest(type="load.bad", priority=10**6),
                api.SubmitJobRequest(type="load.big", payload=payload),
            ]
        ).SerializeToString()
        with server.channel() as channel:
            call = channel.unary_unary("/jobcontrol.v1.JobControl/SubmitJobs")
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as rejected:
                    call(bad, timeout=30)
                assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            settled = rss_bytes(server.process.pid)
            for _ in range(30):
                with pytest.raises(grpc.RpcError):
                    call(bad, timeout=30)
        grown = rss_bytes(server.process.pid) - settled
        assert grown < 10 * len(bad), f"RSS grew {grown / MIB:.0f} MiB over 30 rejected calls"
    finally:
        server.stop()


@pytest.mark.parametrize("messages", [0, 2])
def test_a_unary_method_called_with_other_than_one_message_is_invalid_argument(
    tmp_path: Path, messages: int
):
    server = start_server(tmp_path)
    try:
        body = api.SubmitJobRequest(type="load.one").SerializeToString()
        with server.channel() as channel:
            call = channel.stream_unary("/jobcontrol.v1.JobControl/SubmitJob")
            with pytest.raises(grpc.RpcError) as refused:
                call(iter([body] * messages), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            expected = "none" if messages == 0 else "more than one"
            assert refused.value.details() == (
                f"SubmitJob takes exactly one request message, got {expected}"
            )
            stub = job_control_pb2_grpc.JobControlStub(channel)
            listed = stub.ListJobs(api.ListJobsRequest(), timeout=30)
            assert not listed.jobs
    finally:
        server.stop()


def test_streams_past_the_limit_are_refused_and_health_checks_never_are(tmp_path: Path):
    server = start_server(tmp_path, args=["--max-streams", "2"], metrics=True)
    try:
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            open_streams = [stub.WatchJobs(api.WatchJobsRequest()) for _ in range(2)]
            assert server.metrics_address
            metrics_address = server.metrics_address

            def both_open() -> bool:
                samples = read_metrics(metrics_address)
                return samples.get(("jobcontrol_open_streams", (("method", "WatchJobs"),))) == 2

            wait_until(both_open, what="two open streams")
            third = stub.WatchJobs(api.WatchJobsRequest())
            with pytest.raises(grpc.RpcError) as refused_stream:
                next(third)
            assert refused_stream.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 2 open streams (--max-streams)" in (
                refused_stream.value.details() or ""
            )
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            # Unary calls are counted apart: streams at their limit do not stop them.
            job = stub.SubmitJob(api.SubmitJobRequest(type="load.unary"), timeout=10).job
            assert job.id
            samples = read_metrics(metrics_address)
            refused = (("limit", "streams"), ("method", "WatchJobs"))
            assert samples[("jobcontrol_rpcs_refused_total", refused)] == 1
            for stream in open_streams:
                stream.cancel()
    finally:
        server.stop()


def test_unary_calls_past_the_limit_are_refused_while_streams_are_not(tmp_path: Path):
    """One SubmitJob waits for SQLite's write lock, held here; with a limit of one call
    in flight the next is refused at once, and a stream still opens."""
    server = start_server(tmp_path, args=["--max-concurrent-rpcs", "1"], metrics=True)
    holder = sqlite3.connect(server.store_path, isolation_level=None, timeout=30)
    try:
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            holder.execute("BEGIN IMMEDIATE")
            waiting = stub.SubmitJob.future(api.SubmitJobRequest(type="load.waits"), timeout=60)
            assert server.metrics_address
            metrics_address = server.metrics_address
            wait_until(
                lambda: (
                    read_metrics(metrics_address).get(("jobcontrol_unary_rpcs_in_flight", ())) == 1
                ),
                what="the first call to be in flight",
            )
            with pytest.raises(grpc.RpcError) as refused_call:
                stub.GetJob(api.GetJobRequest(job_id=str(tmp_path)), timeout=10)
            assert refused_call.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 1 calls in flight (--max-concurrent-rpcs)" in (
                refused_call.value.details() or ""
            )
            stream = stub.WatchJobs(api.WatchJobsRequest())
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            holder.execute("ROLLBACK")
            assert waiting.result().created
            samples = read_metrics(metrics_address)
            refused = (("limit", "concurrent_rpcs"), ("method", "GetJob"))
            assert samples[("jobcontrol_rpcs_refused_total", refused)] == 1
            assert (
                samples[
                    (
                        "jobcontrol_rpcs_total",
                        (("code", "RESOURCE_EXHAUSTED"), ("method", "GetJob")),
                    )
                ]
                == 1
            )
            stream.cancel()
    finally:
        holder.close()
        server.stop()


def test_list_jobs_pages_through_jobs_of_1_mib_payloads_exactly_once(tmp_path: Path):
    """20 jobs of ~1 MiB payloads: a page of 50 would be 20 MiB, past the 16 MiB
    message limit (RESOURCE_EXHAUSTED before pages were capped by bytes)."""
    server = start_server(tmp_path)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    try:
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            submitted: list[str] = []
            for batch in range(2):
                requests = []
                for i in range(10):
                    request = api.SubmitJobRequest(type="load.list")
                    request.payload.update({"n": batch * 10 + i, "blob": "z" * (1000 * 1024)})
                    requests.append(request)
                answer = stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=60)
                submitted += [job.id for job in answer.jobs]
            listed: list[str] = []
            token = ""
            pages = 0
            while True:
                page = stub.ListJobs(api.ListJobsRequest(page_token=token), timeout=60)
                pages += 1
                assert page.jobs
                assert page.ByteSize() < MAX_MESSAGE_BYTES // 2
                listed += [job.id for job in page.jobs]
                token = page.next_page_token
                if not token:
                    break
        assert sorted(listed) == sorted(submitted)
        assert len(set(listed)) == len(listed)
        assert pages > 1
    finally:
        server.stop()


async def test_a_request_stream_left_open_gives_up_its_read_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Clients that send a message and never close their side hold every read slot;
    they are refused once READ_SECONDS pass, and the server reads other calls again."""
    monkeypatch.setattr(admission, "READ_SECONDS", 0.5)
    port = free_port()
    stop = asyncio.Event()
    config = ServerConfig(
        listen=ListenAddress("127.0.0.1", port), store=StoreConfig(path=str(tmp_path / "jobs.db"))
    )
    serving = asyncio.create_task(serve(config, stop))
    body = api.SubmitJobRequest(type="load.open").SerializeToString()
    never = asyncio.Event()

    async def one_message_then_silence() -> AsyncIterator[bytes]:
        yield body
        await never.wait()

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            method = "/jobcontrol.v1.JobControl/SubmitJob"
            held = [
                channel.stream_unary(method)(one_message_then_silence())
                for _ in range(admission.MAX_CONCURRENT_READS)
            ]
            for call in held:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(call, 30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "did not arrive whole within 0.5s" in (refused.value.details() or "")
            stub = job_control_pb2_grpc.JobControlStub(channel)
            job = (await stub.SubmitJob(api.SubmitJobRequest(type="load.after"), timeout=30)).job
            assert job.type == "load.after"
    finally:
        never.set()
        stop.set()
        await asyncio.wait_for(serving, 30)
