"""The API over HTTP (`--http-listen`): Connect with JSON from the real curl, Connect
server streams, gRPC-Web, auth, CORS and the same status codes as the gRPC listener,
against a real server process."""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ServerProcess, read_metrics, run_cli, start_server
from tests.polling import wait_until
from tests.server.test_auth_tls import Certs, make_certs

SERVICE = "jobcontrol.v1.JobControl"
TOKEN = "s3cret-token"
ORIGIN = "http://app.example"
_HTTP_LINE = re.compile(r"HTTP API on (https?://\S+:\d+)")
END_STREAM = 0x02  # Connect's end-of-stream envelope flag
GRPC_WEB_TRAILERS = 0x80


@dataclass
class HttpServer:
    process: ServerProcess
    base: str  # http://HOST:PORT

    def url(self, method: str) -> str:
        return f"{self.base}/{SERVICE}/{method}"


def start_http_server(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, metrics: bool = False
) -> HttpServer:
    process = start_server(
        tmp_path, args=["--http-listen", "127.0.0.1:0", *args], env=env, metrics=metrics
    )
    found = _HTTP_LINE.search(process.log)
    assert found, process.log
    return HttpServer(process, found.group(1))


@pytest.fixture
def http(tmp_path: Path) -> Iterator[HttpServer]:
    started = start_http_server(tmp_path)
    try:
        yield started
    finally:
        started.process.stop()
    # Whatever a test sent, the server logged no traceback: bad input is the client's.
    assert "Traceback" not in started.process.log


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    version: str = ""  # as on the status line: HTTP/1.1, HTTP/2

    def json(self) -> Any:
        return json.loads(self.body)


def curl(url: str, body: bytes | str, *extra: str, content_type: str = "application/json") -> Reply:
    """POST with the real curl; the status line and headers as curl saw them."""
    data = body.encode() if isinstance(body, str) else body
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--include",
            "--no-buffer",
            "--max-time",
            "30",
            "-H",
            f"Content-Type: {content_type}",
            "--data-binary",
            "@-",
            *extra,
            url,
        ],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    version, status = status_line.split()[:2]
    return Reply(int(status), headers, payload, version)


def curl_refused(url: str, body: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """A JSON POST with the real curl that may fail at the TLS or HTTP level: its exit
    code and output, for a test to show nothing got through."""
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--max-time",
            "10",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            *extra,
            url,
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


def envelope(message: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + struct.pack(">I", len(message)) + message


def frames(body: bytes) -> list[tuple[int, bytes]]:
    """The (flags, message) envelopes of a Connect stream or gRPC-Web response."""
    found = []
    while body:
        flags, size = body[0], struct.unpack(">I", body[1:5])[0]
        assert len(body) >= 5 + size, "a truncated envelope"
        found.append((flags, body[5 : 5 + size]))
        body = body[5 + size :]
    return found


def grpc_web_trailers(block: bytes) -> dict[str, str]:
    """A gRPC-Web trailers frame: HTTP/1-style header lines."""
    lines = block.decode("latin-1").split("\r\n")
    return {
        line.partition(":")[0].strip().lower(): line.partition(":")[2].strip()
        for line in lines
        if line
    }


def submit(http: HttpServer, job_type: str = "t.http", **fields: Any) -> dict[str, Any]:
    reply = curl(http.url("SubmitJob"), json.dumps({"type": job_type, **fields}))
    assert reply.status == 200, reply
    job: dict[str, Any] = reply.json()["job"]
    return job


def test_curl_submits_and_gets_a_job_with_json(http: HttpServer):
    job = submit(http, payload={"n": 1}, labels={"team": "web"})
    assert job["state"] == "JOB_STATE_PENDING"

    reply = curl(http.url("GetJob"), json.dumps({"job_id": job["id"]}))

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    got = reply.json()["job"]
    assert got["id"] == job["id"]
    assert got["payload"] == {"n": 1}
    assert got["labels"] == {"team": "web"}


def test_http_and_grpc_serve_the_same_store(http: HttpServer):
    """A job submitted over gRPC is there over HTTP, and the reverse."""
    with http.process.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        by_grpc = stub.SubmitJob(api.SubmitJobRequest(type="t.grpc")).job
        by_http = submit(http)
        seen_by_grpc = stub.GetJob(api.GetJobRequest(job_id=by_http["id"])).job

    reply = curl(http.url("GetJob"), json.dumps({"jobId": by_grpc.id}))

    assert reply.json()["job"]["type"] == "t.grpc"
    assert seen_by_grpc.type == "t.http"


def test_http2_cleartext_serves_the_same_call(http: HttpServer):
    job = submit(http)

    reply = curl(http.url("GetJob"), json.dumps({"job_id": job["id"]}), "--http2-prior-knowledge")

    assert reply.version == "HTTP/2"
    assert reply.status == 200
    assert reply.json()["job"]["id"] == job["id"]


def test_a_connect_stream_of_watch_job_follows_a_job_to_succeeded(tmp_path: Path):
    http = start_http_server(tmp_path, "--with-worker")
    try:
        job = submit(http, "demo.sleep", payload={"seconds": 0.3, "steps": 3})
        request = envelope(json.dumps({"job_id": job["id"]}).encode())

        reply = curl(http.url("WatchJob"), request, content_type="application/connect+json")

        assert reply.status == 200
        assert reply.headers["content-type"] == "application/connect+json"
        *messages, (end_flags, end) = frames(reply.body)
        assert end_flags == END_STREAM
        assert json.loads(end) == {}  # no error
        events = [json.loads(message)["event"] for flags, message in messages if flags == 0]
        assert events[0]["kind"] == "EVENT_KIND_SNAPSHOT"
        assert events[-1]["kind"] == "EVENT_KIND_SUCCEEDED"
        assert events[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"
        sequences = [int(event["sequence"]) for event in events]
        assert sequences == sorted(sequences)
    finally:
        http.process.stop()


def test_a_connect_stream_of_watch_jobs_delivers_jobs_submitted_while_it_is_open(
    http: HttpServer,
):
    request = envelope(json.dumps({"filter": {"types": ["t.watched"]}}).encode())
    stream = subprocess.Popen(
        [
            "curl",
            "--silent",
            "--no-buffer",
            "--max-time",
            "60",
            "-H",
            "Content-Type: application/connect+json",
            "--data-binary",
            "@-",
            http.url("WatchJobs"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    received: list[dict[str, Any]] = []

    def read() -> None:
        assert stream.stdout is not None
        while header := stream.stdout.read(5):
            message = stream.stdout.read(struct.unpack(">I", header[1:])[0])
            if header[0] == 0:
                received.append(json.loads(message)["event"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert stream.stdin is not None
        stream.stdin.write(request)
        stream.stdin.close()
        submitted: list[str] = []

        def delivered() -> list[dict[str, Any]] | None:
            """A job per poll until the stream, once subscribed, carries one: a job
            submitted before that is not replayed (no after_sequence)."""
            if received:
                return received
            submitted.append(submit(http, "t.watched")["id"])
            return None

        events = wait_until(delivered, timeout=20, interval=0.1, what="a WatchJobs message")
        assert events[0]["job"]["id"] in submitted
        assert events[0]["job"]["type"] == "t.watched"
    finally:
        stream.kill()
        stream.wait(10)
        reader.join(10)
        assert stream.stdout is not None
        stream.stdout.close()


def test_auth_refuses_calls_without_the_token_and_accepts_it(tmp_path: Path):
    http = start_http_server(tmp_path, env={"JOBCONTROL_AUTH_TOKEN": TOKEN})
    try:
        body = json.dumps({"type": "t.auth"})
        missing = curl(http.url("SubmitJob"), body)
        wrong = curl(http.url("SubmitJob"), body, "-H", "Authorization: Bearer nope")
        stream = curl(
            http.url("WatchJobs"),
            envelope(b"{}"),
            content_type="application/connect+json",
        )
        ok = curl(http.url("SubmitJob"), body, "-H", f"Authorization: Bearer {TOKEN}")

        for refused in (missing, wrong):
            assert refused.status == 401
            assert refused.json()["code"] == "unauthenticated"
            assert "Bearer <token>" in refused.json()["message"]
        ((flags, end),) = frames(stream.body)
        assert flags == END_STREAM
        assert json.loads(end)["error"]["code"] == "unauthenticated"
        assert ok.status == 200
        assert ok.json()["job"]["type"] == "t.auth"
    finally:
        http.process.stop()


def test_cors_preflight_is_answered_for_a_configured_origin_only(tmp_path: Path):
    http = start_http_server(tmp_path, "--http-cors-origin", ORIGIN)
    try:

        def preflight(origin: str) -> Reply:
            done = subprocess.run(
                [
                    "curl",
                    "--silent",
                    "--include",
                    "-X",
                    "OPTIONS",
                    "-H",
                    f"Origin: {origin}",
                    "-H",
                    "Access-Control-Request-Method: POST",
                    "-H",
                    "Access-Control-Request-Headers: authorization, content-type",
                    http.url("SubmitJob"),
                ],
                capture_output=True,
                timeout=60,
                check=True,
            )
            head = done.stdout.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            headers = {
                line.partition(":")[0].lower(): line.partition(":")[2].strip() for line in head[1:]
            }
            return Reply(int(head[0].split()[1]), headers, b"")

        allowed = preflight(ORIGIN)
        refused = preflight("http://evil.example")
        call_allowed = curl(http.url("SubmitJob"), '{"type": "t.cors"}', "-H", f"Origin: {ORIGIN}")
        call_other = curl(
            http.url("SubmitJob"), '{"type": "t.cors"}', "-H", "Origin: http://evil.example"
        )

        assert allowed.status == 204
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        allow_headers = allowed.headers["access-control-allow-headers"]
        assert "authorization" in allow_headers
        assert "content-type" in allow_headers
        assert refused.status == 403
        assert "access-control-allow-origin" not in refused.headers
        assert call_allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "grpc-status" in call_allowed.headers["access-control-expose-headers"]
        assert "access-control-allow-origin" not in call_other.headers
    finally:
        http.process.stop()


def _grpc_error(http: HttpServer, method: str, request: Any) -> grpc.RpcError:
    with http.process.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request)
    return caught.value


@pytest.mark.parametrize(
    ("method", "body", "grpc_request", "code", "http_status"),
    [
        (
            "GetJob",
            {"job_id": "0190c6f2-0000-7000-8000-000000000000"},
            api.GetJobRequest(job_id="0190c6f2-0000-7000-8000-000000000000"),
            grpc.StatusCode.NOT_FOUND,
            404,
        ),
        (
            "GetJob",
            {"job_id": "nope"},
            api.GetJobRequest(job_id="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
        ),
        (
            "SubmitJob",
            {"type": "t.bad", "priority": -5},
            api.SubmitJobRequest(type="t.bad", priority=-5),
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
        ),
        (
            "CancelJob",
            {"job_id": "0190c6f2-0000-7000-8000-000000000000"},
            api.CancelJobRequest(job_id="0190c6f2-0000-7000-8000-000000000000"),
            grpc.StatusCode.NOT_FOUND,
            404,
        ),
    ],
)
def test_errors_have_the_same_code_and_message_as_over_grpc(
    http: HttpServer,
    method: str,
    body: dict[str, Any],
    grpc_request: Any,
    code: grpc.StatusCode,
    http_status: int,
):
    over_grpc = _grpc_error(http, method, grpc_request)

    reply = curl(http.url(method), json.dumps(body))

    assert over_grpc.code() == code
    assert reply.status == http_status
    error = reply.json()
    assert error["code"] == code.name.lower()
    assert error["message"] == over_grpc.details()


def test_a_field_error_carries_the_bad_request_details(http: HttpServer):
    reply = curl(http.url("GetJob"), json.dumps({"job_id": "nope"}))

    (detail,) = reply.json()["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    bad_request = error_details_pb2.BadRequest.FromString(
        base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
    )
    assert bad_request.field_violations[0].field == "job_id"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"job_id": ', "not valid JSON for jobcontrol.v1.GetJobRequest"),
        ('{"jobid": "x"}', 'no field named "jobid"'),
        ('{"job_id": 5}', "not valid JSON for jobcontrol.v1.GetJobRequest"),
        ("[1, 2]", "not valid JSON for jobcontrol.v1.GetJobRequest"),
    ],
)
def test_bad_json_is_invalid_argument_with_a_clear_message(http: HttpServer, body: str, says: str):
    reply = curl(http.url("GetJob"), body)

    assert reply.status == 400
    assert reply.json()["code"] == "invalid_argument"
    assert says in reply.json()["message"]


def test_bad_protobuf_bytes_are_invalid_argument_as_over_grpc(http: HttpServer):
    reply = curl(http.url("GetJob"), b"\xff\xff\xff", content_type="application/proto")

    assert reply.status == 400
    assert reply.json()["code"] == "invalid_argument"
    assert "not a valid jobcontrol.v1.GetJobRequest" in reply.json()["message"]


def test_grpc_web_serves_unary_calls_and_their_errors(http: HttpServer):
    job = submit(http)
    request = api.GetJobRequest(job_id=job["id"]).SerializeToString()
    missing = api.GetJobRequest(job_id="0190c6f2-0000-7000-8000-000000000000").SerializeToString()

    found = curl(http.url("GetJob"), envelope(request), content_type="application/grpc-web+proto")
    not_found = curl(
        http.url("GetJob"), envelope(missing), content_type="application/grpc-web+proto"
    )

    assert found.status == 200
    assert found.headers["content-type"] == "application/grpc-web+proto"
    (data_flags, message), (trailer_flags, trailers) = frames(found.body)
    assert data_flags == 0
    assert api.GetJobResponse.FromString(message).job.id == job["id"]
    assert trailer_flags == GRPC_WEB_TRAILERS
    assert grpc_web_trailers(trailers)["grpc-status"] == "0"
    assert not_found.status == 200  # gRPC-Web: the status is in the trailers
    ((flags, error_trailers),) = frames(not_found.body)
    assert flags == GRPC_WEB_TRAILERS
    status = grpc_web_trailers(error_trailers)
    assert status["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    assert "not%20found" in status["grpc-message"]


def test_grpc_web_streams_watch_job(tmp_path: Path):
    http = start_http_server(tmp_path, "--with-worker")
    try:
        job = submit(http, "demo.sleep", payload={"seconds": 0.2, "steps": 2})
        request = api.WatchJobRequest(job_id=job["id"]).SerializeToString()

        reply = curl(
            http.url("WatchJob"), envelope(request), content_type="application/grpc-web+proto"
        )

        *messages, (trailer_flags, trailers) = frames(reply.body)
        events = [api.WatchJobResponse.FromString(m).event for _, m in messages]
        assert events[0].kind == pb.EVENT_KIND_SNAPSHOT
        assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED
        assert trailer_flags == GRPC_WEB_TRAILERS
        assert grpc_web_trailers(trailers)["grpc-status"] == "0"
    finally:
        http.process.stop()


def test_a_stream_ends_with_the_watch_error_code(http: HttpServer):
    request = envelope(json.dumps({"job_id": "0190c6f2-0000-7000-8000-000000000000"}).encode())

    reply = curl(http.url("WatchJob"), request, content_type="application/connect+json")

    ((flags, end),) = frames(reply.body)
    assert flags == END_STREAM
    assert json.loads(end)["error"]["code"] == "not_found"


def test_a_bad_http_listen_address_is_one_line(tmp_path: Path):
    done = run_cli(
        "jobcontrol-server",
        "--listen",
        "127.0.0.1:0",
        "--store-path",
        str(tmp_path / "jobs.db"),
        "--http-listen",
        "nowhere",
    )

    assert done.returncode != 0
    assert "--http-listen 'nowhere' is not HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_http_port_stops_the_server_before_it_listens(http: HttpServer, tmp_path: Path):
    taken = http.base.removeprefix("http://")

    done = run_cli(
        "jobcontrol-server",
        "--listen",
        "127.0.0.1:0",
        "--store-path",
        str(tmp_path / "other.db"),
        "--http-listen",
        taken,
    )

    assert done.returncode == 1
    assert f"--http-listen: cannot listen on {taken}: the port is already in use" in done.stderr
    assert "listening on" not in done.stderr
    assert not (tmp_path / "other.db").exists()


def open_stream(http: HttpServer, method: str, request: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A Connect server stream from curl, left open; its stdout gives the envelopes."""
    stream = subprocess.Popen(
        [
            "curl",
            "--silent",
            "--no-buffer",
            "-H",
            "Content-Type: application/connect+json",
            "--data-binary",
            "@-",
            http.url(method),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert stream.stdin is not None
    stream.stdin.write(envelope(json.dumps(request).encode()))
    stream.stdin.close()
    return stream


def test_http_calls_and_streams_are_counted_like_grpc_ones(tmp_path: Path):
    """One call layer for both listeners: the same metrics, and a stream whose client
    goes away is closed and unsubscribed."""
    http = start_http_server(tmp_path, metrics=True)
    assert http.process.metrics_address is not None
    address = http.process.metrics_address

    def sample(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return read_metrics(address).get(key, -1.0)  # -1: no such sample

    try:
        curl(http.url("GetJob"), json.dumps({"job_id": "0190c6f2-0000-7000-8000-000000000000"}))
        curl(http.url("GetJob"), '{"job_id": ')  # refused by the JSON codec
        curl(http.url("GetJob"), b"\xff", content_type="application/proto")
        submit(http)
        assert sample("jobcontrol_rpcs_total", method="GetJob", code="NOT_FOUND") == 1
        assert sample("jobcontrol_rpcs_total", method="GetJob", code="INVALID_ARGUMENT") == 2
        assert sample("jobcontrol_rpcs_total", method="SubmitJob", code="OK") == 1
        assert sample("jobcontrol_unary_rpcs_in_flight") == 0
        assert sample("jobcontrol_request_bytes_in_flight") == 0

        stream = open_stream(http, "WatchJobs", {})
        try:
            wait_until(
                lambda: sample("jobcontrol_open_streams", method="WatchJobs") == 1,
                what="the HTTP stream to be open",
            )
        finally:
            stream.kill()
            stream.wait(10)
            assert stream.stdout is not None
            stream.stdout.close()
        wait_until(
            lambda: sample("jobcontrol_open_streams", method="WatchJobs") == 0,
            what="the stream of a client that went away to be closed",
        )
        assert sample("jobcontrol_rpcs_total", method="WatchJobs", code="CANCELLED") == 1
    finally:
        http.process.stop()


def test_shutdown_ends_http_streams_with_unavailable_and_a_resume_point(tmp_path: Path):
    http = start_http_server(tmp_path, metrics=True)
    assert http.process.metrics_address is not None
    address = http.process.metrics_address
    stream = open_stream(http, "WatchJobs", {})
    try:
        wait_until(
            lambda: (
                read_metrics(address).get(
                    ("jobcontrol_open_streams", (("method", "WatchJobs"),)), 0
                )
                == 1
            ),
            what="the HTTP stream to be open",
        )

        assert http.process.stop() == 0
        assert stream.stdout is not None
        body = stream.stdout.read()  # to the end: the server closed the stream

        ((flags, end),) = frames(body)
        assert flags == END_STREAM
        error = json.loads(end)["error"]
        assert error["code"] == "unavailable"
        assert "resume with after_sequence=" in error["message"]
        assert "stopped" in http.process.log
    finally:
        stream.kill()
        stream.wait(10)
        assert stream.stdout is not None
        stream.stdout.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_with_tls_the_http_listener_serves_https_with_the_same_certificate(
    tmp_path: Path, certs: Certs
):
    http = start_http_server(
        tmp_path, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)
    )
    try:
        assert http.base.startswith("https://")
        body = json.dumps({"type": "t.tls"})

        http1 = curl(http.url("SubmitJob"), body, "--cacert", str(certs.ca), "--http1.1")
        http2 = curl(http.url("SubmitJob"), body, "--cacert", str(certs.ca), "--http2")
        plaintext = curl_refused(http.url("SubmitJob").replace("https://", "http://"), body)

        assert http1.status == 200
        assert http2.status == 200
        assert http2.json()["job"]["type"] == "t.tls"
        assert http1.version == "HTTP/1.1"
        assert http2.version == "HTTP/2"
        assert plaintext.returncode != 0
        assert b"job" not in plaintext.stdout
    finally:
        http.process.stop()


def test_with_mtls_the_http_listener_requires_a_client_certificate(tmp_path: Path, certs: Certs):
    http = start_http_server(
        tmp_path,
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--tls-client-ca",
        str(certs.ca),
    )
    try:
        body = json.dumps({"type": "t.mtls"})
        without = curl_refused(http.url("SubmitJob"), body, "--cacert", str(certs.ca))
        other = curl_refused(
            http.url("SubmitJob"),
            body,
            "--cacert",
            str(certs.ca),
            "--cert",
            str(certs.other_client_cert),
            "--key",
            str(certs.other_client_key),
        )
        with_cert = curl(
            http.url("SubmitJob"),
            body,
            "--cacert",
            str(certs.ca),
            "--cert",
            str(certs.client_cert),
            "--key",
            str(certs.client_key),
        )

        assert without.returncode != 0
        assert b"job" not in without.stdout
        assert other.returncode != 0
        assert b"job" not in other.stdout
        assert with_cert.status == 200
        assert with_cert.json()["job"]["type"] == "t.mtls"
    finally:
        http.process.stop()


def test_a_call_past_the_load_limit_is_refused_before_its_body_is_read(tmp_path: Path):
    """Admission comes before connectrpc reads the body, as on the gRPC listener: a call
    whose body is still arriving holds the one slot, and the next is refused at once."""
    http = start_http_server(tmp_path, "--max-concurrent-rpcs", "1", metrics=True)
    assert http.process.metrics_address is not None
    address = http.process.metrics_address

    def in_flight() -> float:
        return read_metrics(address).get(("jobcontrol_unary_rpcs_in_flight", ()), -1.0)

    host, _, port = http.base.removeprefix("http://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(
                f"POST /{SERVICE}/GetJob HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
            )
            wait_until(lambda: in_flight() == 1, what="the slow call to be admitted")

            refused = curl(http.url("SubmitJob"), json.dumps({"type": "t.refused"}))

            assert refused.status == 429
            assert refused.json()["code"] == "resource_exhausted"
            assert "--max-concurrent-rpcs" in refused.json()["message"]
        wait_until(lambda: in_flight() == 0, what="the slow call's slot to be freed")
        assert submit(http)["state"] == "JOB_STATE_PENDING"
    finally:
        http.process.stop()


def decode_text_chunks(body: bytes) -> bytes:
    """gRPC-Web text: base64 whose chunks may each be padded, so 4 characters at a time."""
    text = body.translate(None, b"\r\n")
    return b"".join(base64.b64decode(text[i : i + 4]) for i in range(0, len(text), 4))


def test_grpc_web_text_mode_serves_unary_calls_and_streams(tmp_path: Path):
    """The base64 mode Google's grpc-web client uses for server streams."""
    http = start_http_server(tmp_path, "--with-worker")
    try:
        job = submit(http, "demo.sleep", payload={"seconds": 0.3, "steps": 3})
        get = base64.b64encode(envelope(api.GetJobRequest(job_id=job["id"]).SerializeToString()))
        watch = base64.b64encode(
            envelope(api.WatchJobRequest(job_id=job["id"]).SerializeToString())
        )

        unary = curl(http.url("GetJob"), get, content_type="application/grpc-web-text")
        stream = curl(http.url("WatchJob"), watch, content_type="application/grpc-web-text")
        bad = curl(http.url("GetJob"), b"AAA", content_type="application/grpc-web-text")

        assert unary.headers["content-type"] == "application/grpc-web-text+proto"
        (_, message), (trailer_flags, trailers) = frames(decode_text_chunks(unary.body))
        assert trailer_flags == GRPC_WEB_TRAILERS
        assert api.GetJobResponse.FromString(message).job.id == job["id"]
        assert grpc_web_trailers(trailers)["grpc-status"] == "0"
        *messages, (_, trailers) = frames(decode_text_chunks(stream.body))
        events = [api.WatchJobResponse.FromString(m).event for _, m in messages]
        assert events[0].kind == pb.EVENT_KIND_SNAPSHOT
        assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED
        assert grpc_web_trailers(trailers)["grpc-status"] == "0"
        ((_, trailers),) = frames(decode_text_chunks(bad.body))
        status = grpc_web_trailers(trailers)
        assert status["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert "base64" in status["grpc-message"]
    finally:
        http.process.stop()


def test_the_http_listener_and_cors_origins_come_from_the_environment_too(tmp_path: Path):
    process = start_server(
        tmp_path,
        env={
            "JOBCONTROL_HTTP_LISTEN": "127.0.0.1:0",
            "JOBCONTROL_HTTP_CORS_ORIGINS": "http://a.example, http://b.example",
        },
    )
    try:
        found = _HTTP_LINE.search(process.log)
        assert found, process.log
        http = HttpServer(process, found.group(1))

        reply = curl(http.url("SubmitJob"), '{"type": "t.env"}', "-H", "Origin: http://b.example")

        assert reply.status == 200
        assert reply.headers["access-control-allow-origin"] == "http://b.example"
        assert "CORS for http://a.example, http://b.example" in process.log
    finally:
        process.stop()


def test_without_http_listen_there_is_no_http_listener(server: ServerProcess):
    assert "HTTP API on" not in server.log


@pytest.mark.parametrize("origin", ["localhost:3000", "http://app.example/page", "*"])
def test_a_cors_origin_that_is_not_an_origin_is_refused_at_start(tmp_path: Path, origin: str):
    done = run_cli(
        "jobcontrol-server",
        "--store-path",
        str(tmp_path / "jobs.db"),
        "--http-listen",
        "127.0.0.1:0",
        "--http-cors-origin",
        origin,
    )

    assert done.returncode != 0
    assert f"--http-cors-origin {origin!r} is not an origin like" in done.stderr
    assert "Traceback" not in done.stderr


def test_grpc_answers_on_http2_and_is_refused_over_http1_with_a_reason(http: HttpServer):
    job = submit(http)
    request = envelope(api.GetJobRequest(job_id=job["id"]).SerializeToString())
    address = http.base.removeprefix("http://")

    with grpc.insecure_channel(address) as channel:
        over_grpc = job_control_pb2_grpc.JobControlStub(channel).GetJob(
            api.GetJobRequest(job_id=job["id"]), timeout=30
        )
    over_http1 = curl(http.url("GetJob"), request, content_type="application/grpc")

    assert over_grpc.job.id == job["id"]
    assert over_http1.status == 415
    assert b"gRPC needs HTTP/2" in over_http1.body
    assert "Traceback" not in http.process.log


def test_a_stream_called_as_a_unary_call_is_told_how_to_call_it(http: HttpServer):
    reply = curl(http.url("WatchJob"), '{"job_id": "x"}')

    assert reply.status == 415
    assert b"WatchJob is a server stream: send Content-Type application/connect+json" in (
        reply.body
    )


def test_an_http_watch_sees_a_change_made_over_grpc(http: HttpServer):
    """One store and one EventHub behind both listeners."""
    job = submit(http, "t.nobody-serves")
    stream = open_stream(http, "WatchJob", {"job_id": job["id"]})
    try:
        assert stream.stdout is not None
        header = stream.stdout.read(5)
        snapshot = json.loads(stream.stdout.read(struct.unpack(">I", header[1:])[0]))["event"]
        assert snapshot["kind"] == "EVENT_KIND_SNAPSHOT"

        with http.process.channel() as channel:
            job_control_pb2_grpc.JobControlStub(channel).CancelJob(
                api.CancelJobRequest(job_id=job["id"], reason="from gRPC"), timeout=30
            )
        rest = frames(stream.stdout.read())  # the stream ends after the terminal event

        *changes, (end_flags, _) = rest
        last = json.loads(changes[-1][1])["event"]
        assert last["kind"] == "EVENT_KIND_CANCELLED"
        assert last["job"]["cancelReason"] == "from gRPC"
        assert end_flags == END_STREAM
    finally:
        stream.kill()
        stream.wait(10)
        assert stream.stdout is not None
        stream.stdout.close()
