"""`python -m jobcontrol.server.healthcheck [ADDRESS]`: exit 0 if the server is SERVING.

For container health checks (docker compose, Kubernetes exec probes) without installing
a separate grpc_health_probe binary. ADDRESS defaults to JOBCONTROL_LISTEN's port on
127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    listen = os.environ.get("JOBCONTROL_LISTEN", "127.0.0.1:50051")
    address = args[0] if args else f"127.0.0.1:{listen.rsplit(':', 1)[-1]}"
    try:
        with grpc.insecure_channel(address) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' typing lacks Check
            response = stub.Check(
                health_pb2.HealthCheckRequest(service="jobcontrol.v1.JobControl"), timeout=3
            )
    except grpc.RpcError as error:
        print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
