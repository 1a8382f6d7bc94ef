"""The server starts as users start it, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from tests.conftest import ServerProcess


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
