"""The server starts as users start it, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from tests.conftest import ServerProcess, start_server, wait_until


def test_server_serves_health_and_submit_then_exits_zero_on_sigterm(server: ServerProcess):
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        stub = job_control_pb2_grpc.JobControlStub(channel)
        submitted = stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=5)
        assert submitted.created
    assert server.stop() == 0
    assert "stopped" in server.log


def test_metrics_endpoint_reports_rpcs_streams_jobs_and_tail_lag(tmp_path: Path):
    server = start_server(tmp_path, metrics=True)
    try:
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.GetJob(api.GetJobRequest(job_id="bad"), timeout=5)

        def scrape() -> str | None:
            text = urllib.request.urlopen(f"http://{server.metrics_address}/metrics").read()
            body = text.decode()
            ready = 'jobcontrol_jobs{state="PENDING"} 1.0' in body
            sampled = "jobcontrol_event_loop_lag_seconds_count 0.0" not in body
            return body if ready and sampled else None

        body = wait_until(scrape, timeout=30, interval=0.2, what="job counts in /metrics")
    finally:
        server.stop()
    assert 'jobcontrol_rpcs_total{code="OK",method="SubmitJob"} 1.0' in body
    assert 'jobcontrol_rpcs_total{code="INVALID_ARGUMENT",method="GetJob"} 1.0' in body
    assert "jobcontrol_open_streams" in body
    assert "jobcontrol_event_tail_lag_seconds_bucket" in body
    assert "jobcontrol_event_loop_lag_seconds_bucket" in body
    assert 'jobcontrol_store_calls_total{operation="create_job"} 1.0' in body
    assert 'jobcontrol_store_call_duration_seconds_count{operation="create_job"} 1.0' in body
