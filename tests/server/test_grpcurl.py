"""A real `grpcurl` (no .proto files, server reflection only) against a real server.

grpcurl v1.8.6 prints proto field names ("queue_position"); newer versions print
lowerCamelCase ("queuePosition"). The helpers here accept either.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, wait_until

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
SERVICE = "jobcontrol.v1.JobControl"
RPCS = (
    "SubmitJob",
    "SubmitJobs",
    "GetJob",
    "ListJobs",
    "WatchJob",
    "WatchJobs",
    "CancelJob",
    "RetryJob",
    "ListWorkers",
)
# grpcurl exits with 64 + the gRPC status code when the RPC fails.
EXIT_INVALID_ARGUMENT = 64 + 3
EXIT_NOT_FOUND = 64 + 5


def grpcurl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL, "-connect-timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def call(
    server: ServerProcess, method: str, data: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    data_args = ["-d", json.dumps(data)] if data is not None else []
    return grpcurl("-plaintext", *data_args, server.address, method)


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, f"grpcurl failed ({result.returncode}):\n{result.stderr}"
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints the messages of a stream as JSON objects one after another."""
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return messages
        message, index = decoder.raw_decode(text, index)
        messages.append(message)


def field(message: dict[str, Any], name: str) -> Any:
    """A field by its proto name or its lowerCamelCase JSON name, or None."""
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    if name in message:
        return message[name]
    return message.get(camel)


def has_field(message: dict[str, Any], name: str) -> bool:
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    return name in message or camel in message


def submit(server: ServerProcess, **request: Any) -> dict[str, Any]:
    return ok_json(call(server, f"{SERVICE}/SubmitJob", {"type": "demo.sleep", **request}))


def is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# ---- reflection ----------------------------------------------------------------------


def test_list_shows_jobcontrol_and_health_services(server: ServerProcess):
    result = grpcurl("-plaintext", server.address, "list")

    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services


def test_describe_service_shows_every_rpc_with_its_messages(server: ServerProcess):
    result = grpcurl("-plaintext", server.address, "describe", SERVICE)

    assert result.returncode == 0, result.stderr
    assert f"{SERVICE} is a service" in result.stdout
    for rpc in RPCS:
        assert re.search(
            rf"rpc {rpc} \( \.jobcontrol\.v1\.{rpc}Request \) returns \( "
            rf"(stream )?\.jobcontrol\.v1\.{rpc}Response \)",
            result.stdout,
        ), f"{rpc} missing from:\n{result.stdout}"
    assert "returns ( stream .jobcontrol.v1.WatchJobResponse )" in result.stdout
    assert "returns ( stream .jobcontrol.v1.WatchJobsResponse )" in result.stdout


def test_describe_job_message_shows_its_fields(server: ServerProcess):
    result = grpcurl("-plaintext", server.address, "describe", "jobcontrol.v1.Job")

    assert result.returncode == 0, result.stderr
    assert "jobcontrol.v1.Job is a message" in result.stdout
    for declaration in (
        "string id = 1;",
        "string type = 2;",
        ".google.protobuf.Struct payload = 3;",
        ".jobcontrol.v1.JobState state = 4;",
        ".jobcontrol.v1.Progress progress = 5;",
        "int32 max_attempts = 9;",
        "map<string, string> labels = 11;",
        "int64 queue_position = 15;",
        ".google.protobuf.Timestamp create_time = 18;",
    ):
        assert declaration in result.stdout, f"{declaration!r} missing from:\n{result.stdout}"


# ---- unary RPCs ----------------------------------------------------------------------


def test_submit_job_returns_a_created_pending_job_with_a_uuid(server: ServerProcess):
    response = submit(
        server,
        payload={"seconds": 1.5, "steps": 3},
        priority=7,
        labels={"team": "audio"},
    )

    assert response["created"] is True
    job = response["job"]
    assert is_canonical_uuid(job["id"]), job["id"]
    assert job["type"] == "demo.sleep"
    assert job["state"] == "JOB_STATE_PENDING"
    assert job["payload"] == {"seconds": 1.5, "steps": 3}
    assert job["priority"] == 7
    assert job["labels"] == {"team": "audio"}
    assert field(job, "max_attempts") == 3


def test_submit_job_of_a_type_no_worker_serves_shows_the_warning(server: ServerProcess):
    response = submit(server, type="no.such.type")

    assert response["warnings"] == [
        'no live worker serves job type "no.such.type"; the job waits until one registers '
        "(ListWorkers shows the types workers serve)"
    ]
    assert response["job"]["unserved"] is True
    got = ok_json(call(server, f"{SERVICE}/GetJob", {"job_id": response["job"]["id"]}))["job"]
    assert got["unserved"] is True


def test_submit_job_accepts_camel_case_json_field_names(server: ServerProcess):
    response = submit(server, maxAttempts=5, idempotencyKey="grpcurl-camel")

    job = response["job"]
    assert field(job, "max_attempts") == 5
    assert field(job, "idempotency_key") == "grpcurl-camel"


def test_get_job_returns_the_pending_job_with_its_queue_position(server: ServerProcess):
    first = submit(server)["job"]
    second = submit(server)["job"]

    got = ok_json(call(server, f"{SERVICE}/GetJob", {"job_id": second["id"]}))["job"]

    assert got["id"] == second["id"]
    assert got["state"] == "JOB_STATE_PENDING"
    assert has_field(got, "queue_position"), got
    # int64 is a JSON string; the first job of the same type is ahead of it.
    assert int(field(got, "queue_position")) == 1
    head = ok_json(call(server, f"{SERVICE}/GetJob", {"job_id": first["id"]}))["job"]
    assert int(field(head, "queue_position")) == 0


def test_cancel_job_shows_the_job_cancelled(server: ServerProcess):
    job = submit(server)["job"]

    cancelled = ok_json(
        call(server, f"{SERVICE}/CancelJob", {"job_id": job["id"], "reason": "from grpcurl"})
    )["job"]

    assert cancelled["id"] == job["id"]
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    assert field(cancelled, "cancel_reason") == "from grpcurl"
    assert not has_field(cancelled, "queue_position")


def test_get_job_with_a_malformed_id_is_invalid_argument(server: ServerProcess):
    result = call(server, f"{SERVICE}/GetJob", {"job_id": "not-a-uuid"})

    assert result.returncode == EXIT_INVALID_ARGUMENT, result
    assert "InvalidArgument" in result.stderr
    assert "job_id" in result.stderr


def test_get_job_with_an_unknown_id_is_not_found(server: ServerProcess):
    unknown = str(uuid.uuid4())

    result = call(server, f"{SERVICE}/GetJob", {"job_id": unknown})

    assert result.returncode == EXIT_NOT_FOUND, result
    assert "NotFound" in result.stderr
    assert unknown in result.stderr


def test_health_check_is_serving(server: ServerProcess):
    response = ok_json(call(server, "grpc.health.v1.Health/Check"))

    assert response == {"status": "SERVING"}


# ---- streaming -----------------------------------------------------------------------


def test_watch_job_streams_snapshot_then_cancelled_and_exits_zero(
    server: ServerProcess, tmp_path: Path
):
    job = submit(server)["job"]
    out_path = tmp_path / "watch.out"
    err_path = tmp_path / "watch.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        watcher = subprocess.Popen(
            [
                GRPCURL,
                "-plaintext",
                "-max-time",
                "60",
                "-d",
                json.dumps({"job_id": job["id"]}),
                server.address,
                f"{SERVICE}/WatchJob",
            ],
            stdout=out,
            stderr=err,
            text=True,
        )
    try:

        def snapshot_seen() -> bool:
            if watcher.poll() is not None:
                raise AssertionError(f"watch exited early: {err_path.read_text()}")
            try:
                events = json_stream(out_path.read_text())
            except json.JSONDecodeError:  # a message only partly written so far
                return False
            return bool(events)

        wait_until(snapshot_seen, timeout=15, what="the WatchJob snapshot")

        cancelled = ok_json(call(server, f"{SERVICE}/CancelJob", {"job_id": job["id"]}))
        assert cancelled["job"]["state"] == "JOB_STATE_CANCELLED"

        returncode = watcher.wait(timeout=15)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)

    assert returncode == 0, err_path.read_text()
    events = [message["event"] for message in json_stream(out_path.read_text())]
    kinds = [event["kind"] for event in events]
    assert kinds[0] == "EVENT_KIND_SNAPSHOT", kinds
    assert events[0]["job"]["state"] == "JOB_STATE_PENDING"
    assert kinds[-1] == "EVENT_KIND_CANCELLED", kinds
    assert events[-1]["job"]["state"] == "JOB_STATE_CANCELLED"
    assert all(event["job"]["id"] == job["id"] for event in events)
    sequences = [int(event["sequence"]) for event in events]
    assert sequences == sorted(sequences)
    assert sequences[-1] > sequences[0]
