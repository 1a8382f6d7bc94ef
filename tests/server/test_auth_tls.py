"""Bearer-token auth on every RPC but health, and TLS/mTLS, against real server processes.

Certificates are made here with the `openssl` CLI: a CA, a server certificate for
localhost/127.0.0.1 and a client certificate signed by it, and an unrelated second CA
with its own client certificate.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc, job_pb2
from tests.conftest import ServerProcess, start_server

OPENSSL = "/usr/bin/openssl"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
TIMEOUT = 10.0
OK = grpc.StatusCode.OK

Metadata = tuple[tuple[str, str], ...]


@contextmanager
def running(directory: Path, **kwargs: Any) -> Iterator[ServerProcess]:
    directory.mkdir(parents=True, exist_ok=True)
    server = start_server(directory, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def grpcurl(*args: str, connect_timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run grpcurl; a dial that cannot succeed (plaintext to TLS, no client cert) takes
    the whole `connect_timeout`, so expected failures pass a short one."""
    return subprocess.run(
        [GRPCURL, "-connect-timeout", str(connect_timeout), "-max-time", "30", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _first(stream: Any) -> Any:
    """The first message of a server stream (raises its error), then hang up."""
    try:
        return next(iter(stream))
    finally:
        stream.cancel()


def _unknown_id() -> str:
    return str(uuid.uuid4())


# Each JobControl RPC with a request that is valid apart from any credentials.
RPC_CALLS: dict[str, Callable[[job_control_pb2_grpc.JobControlStub, Metadata], Any]] = {
    "SubmitJob": lambda stub, md: stub.SubmitJob(
        api.SubmitJobRequest(type="demo.sleep"), metadata=md, timeout=TIMEOUT
    ),
    "SubmitJobs": lambda stub, md: stub.SubmitJobs(
        api.SubmitJobsRequest(requests=[api.SubmitJobRequest(type="demo.sleep")]),
        metadata=md,
        timeout=TIMEOUT,
    ),
    "GetJob": lambda stub, md: stub.GetJob(
        api.GetJobRequest(job_id=_unknown_id()), metadata=md, timeout=TIMEOUT
    ),
    "ListJobs": lambda stub, md: stub.ListJobs(api.ListJobsRequest(), metadata=md, timeout=TIMEOUT),
    "WatchJob": lambda stub, md: _first(
        stub.WatchJob(api.WatchJobRequest(job_id=_unknown_id()), metadata=md, timeout=TIMEOUT)
    ),
    # Replays from the start, so with a job in the store the first message comes at once.
    "WatchJobs": lambda stub, md: _first(
        stub.WatchJobs(api.WatchJobsRequest(after_sequence=0), metadata=md, timeout=TIMEOUT)
    ),
    "CancelJob": lambda stub, md: stub.CancelJob(
        api.CancelJobRequest(job_id=_unknown_id()), metadata=md, timeout=TIMEOUT
    ),
    "RetryJob": lambda stub, md: stub.RetryJob(
        api.RetryJobRequest(job_id=_unknown_id()), metadata=md, timeout=TIMEOUT
    ),
    "ListWorkers": lambda stub, md: stub.ListWorkers(
        api.ListWorkersRequest(), metadata=md, timeout=TIMEOUT
    ),
}

# What each call above gives with a valid token on a store holding at least one job.
AUTHORIZED_OUTCOME = {
    "SubmitJob": OK,
    "SubmitJobs": OK,
    "GetJob": grpc.StatusCode.NOT_FOUND,
    "ListJobs": OK,
    "WatchJob": grpc.StatusCode.NOT_FOUND,
    "WatchJobs": OK,
    "CancelJob": grpc.StatusCode.NOT_FOUND,
    "RetryJob": grpc.StatusCode.NOT_FOUND,
    "ListWorkers": OK,
}


def outcome(rpc: str, stub: job_control_pb2_grpc.JobControlStub, md: Metadata) -> grpc.StatusCode:
    try:
        RPC_CALLS[rpc](stub, md)
    except grpc.RpcError as error:
        return error.code()
    return OK


# ---- bearer tokens -------------------------------------------------------------------


@dataclass
class AuthServer:
    server: ServerProcess
    token: str


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    token = secrets.token_urlsafe(32)
    directory = tmp_path_factory.mktemp("auth")
    with running(directory, env={"JOBCONTROL_AUTH_TOKEN": token}) as server:
        yield AuthServer(server, token)


@pytest.fixture
def auth_stub(auth_server: AuthServer) -> Iterator[job_control_pb2_grpc.JobControlStub]:
    with auth_server.server.channel() as channel:
        yield job_control_pb2_grpc.JobControlStub(channel)


def bad_credentials(token: str) -> dict[str, Metadata]:
    return {
        "no-token": (),
        "wrong-token": bearer(secrets.token_urlsafe(32)),
        "token-without-bearer": (("authorization", token),),
        "basic-scheme": (("authorization", f"Basic {token}"),),
        "token-prefix": bearer(token[:-1]),
        "token-with-suffix": bearer(token + "x"),
        "empty-bearer": (("authorization", "Bearer "),),
        "token-in-another-header": (("x-api-key", token), ("token", f"Bearer {token}")),
    }


BAD_CREDENTIALS = list(bad_credentials("t"))


def test_the_rpc_table_covers_every_jobcontrol_rpc():
    service = api.DESCRIPTOR.services_by_name["JobControl"]

    assert set(RPC_CALLS) == set(service.methods_by_name)
    assert set(AUTHORIZED_OUTCOME) == set(service.methods_by_name)


@pytest.mark.parametrize("rpc", list(RPC_CALLS))
def test_every_rpc_without_a_token_is_unauthenticated(
    auth_stub: job_control_pb2_grpc.JobControlStub, rpc: str
):
    with pytest.raises(grpc.RpcError) as raised:
        RPC_CALLS[rpc](auth_stub, ())

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (raised.value.details() or "")


@pytest.mark.parametrize("form", BAD_CREDENTIALS)
@pytest.mark.parametrize("rpc", list(RPC_CALLS))
def test_every_rpc_with_a_wrong_or_malformed_token_is_unauthenticated(
    auth_server: AuthServer,
    auth_stub: job_control_pb2_grpc.JobControlStub,
    rpc: str,
    form: str,
):
    metadata = bad_credentials(auth_server.token)[form]

    assert outcome(rpc, auth_stub, metadata) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", list(RPC_CALLS))
def test_every_rpc_with_the_right_token_is_served(
    auth_server: AuthServer, auth_stub: job_control_pb2_grpc.JobControlStub, rpc: str
):
    md = bearer(auth_server.token)
    # A job in the store gives WatchJobs (replaying from 0) a first message.
    auth_stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), metadata=md, timeout=TIMEOUT)

    assert outcome(rpc, auth_stub, md) == AUTHORIZED_OUTCOME[rpc]


def test_the_bearer_scheme_is_case_insensitive(
    auth_server: AuthServer, auth_stub: job_control_pb2_grpc.JobControlStub
):
    metadata = (("authorization", f"bearer {auth_server.token}"),)

    response = auth_stub.SubmitJob(
        api.SubmitJobRequest(type="demo.sleep"), metadata=metadata, timeout=TIMEOUT
    )

    assert response.created


def test_a_job_submitted_with_the_token_can_be_fetched_and_cancelled(
    auth_server: AuthServer, auth_stub: job_control_pb2_grpc.JobControlStub
):
    md = bearer(auth_server.token)
    job = auth_stub.SubmitJob(
        api.SubmitJobRequest(type="demo.sleep"), metadata=md, timeout=TIMEOUT
    ).job

    got = auth_stub.GetJob(api.GetJobRequest(job_id=job.id), metadata=md, timeout=TIMEOUT).job
    watch = auth_stub.WatchJob(api.WatchJobRequest(job_id=job.id), metadata=md, timeout=TIMEOUT)
    try:
        snapshot = next(iter(watch))
        cancelled = auth_stub.CancelJob(
            api.CancelJobRequest(job_id=job.id), metadata=md, timeout=TIMEOUT
        ).job
        rest = list(watch)
    finally:
        watch.cancel()

    assert got.id == job.id
    assert snapshot.event.kind == job_pb2.EVENT_KIND_SNAPSHOT
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert rest[-1].event.kind == job_pb2.EVENT_KIND_CANCELLED


def test_health_check_needs_no_token(auth_server: AuthServer):
    with auth_server.server.channel() as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("form", BAD_CREDENTIALS)
def test_reflection_without_a_valid_token_is_unauthenticated(auth_server: AuthServer, form: str):
    headers = [
        arg
        for name, value in bad_credentials(auth_server.token)[form]
        for arg in ("-H", f"{name}: {value}")
    ]

    result = grpcurl("-plaintext", *headers, auth_server.server.address, "list")

    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr, result.stderr
    assert "jobcontrol.v1.JobControl" not in result.stdout


def test_reflection_with_the_token_lists_the_services(auth_server: AuthServer):
    result = grpcurl(
        "-plaintext",
        "-H",
        f"authorization: Bearer {auth_server.token}",
        auth_server.server.address,
        "list",
    )

    assert result.returncode == 0, result.stderr
    assert "jobcontrol.v1.JobControl" in result.stdout.split()


def test_grpcurl_rpc_with_the_token_is_served_and_without_it_is_unauthenticated(
    auth_server: AuthServer,
):
    address = auth_server.server.address
    header = f"authorization: Bearer {auth_server.token}"
    method = "jobcontrol.v1.JobControl/ListWorkers"

    # -reflect-header: reflection passes, so only the RPC itself lacks the token.
    denied = grpcurl("-plaintext", "-reflect-header", header, address, method)
    allowed = grpcurl("-plaintext", "-H", header, address, method)

    assert denied.returncode == 64 + grpc.StatusCode.UNAUTHENTICATED.value[0], denied
    assert "Unauthenticated" in denied.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_tokens_file_accepts_every_listed_token_and_nothing_else(tmp_path: Path):
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# ci and dashboard tokens\n{first}\n\n  {second}  \n")

    with (
        running(tmp_path / "server", args=["--auth-tokens-file", str(tokens_file)]) as server,
        server.channel() as channel,
    ):
        stub = job_control_pb2_grpc.JobControlStub(channel)
        accepted = [
            stub.SubmitJob(
                api.SubmitJobRequest(type="demo.sleep"), metadata=bearer(token), timeout=TIMEOUT
            ).created
            for token in (first, second)
        ]
        refused = {
            name: outcome("ListJobs", stub, metadata)
            for name, metadata in {
                "none": (),
                "comment": bearer("# ci and dashboard tokens"),
                "other": bearer(secrets.token_urlsafe(32)),
                "both": bearer(f"{first} {second}"),
            }.items()
        }

    assert accepted == [True, True]
    assert refused == dict.fromkeys(refused, grpc.StatusCode.UNAUTHENTICATED)
    log = server.log
    assert first not in log
    assert second not in log


def test_env_token_and_tokens_file_are_both_accepted(tmp_path: Path):
    env_token, file_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{file_token}\n")

    with (
        running(
            tmp_path / "server",
            args=["--auth-tokens-file", str(tokens_file)],
            env={"JOBCONTROL_AUTH_TOKEN": env_token},
        ) as server,
        server.channel() as channel,
    ):
        stub = job_control_pb2_grpc.JobControlStub(channel)
        codes = [outcome("ListJobs", stub, bearer(t)) for t in (env_token, file_token)]

    assert codes == [OK, OK]


def test_the_token_never_appears_in_the_server_log(tmp_path: Path):
    token = secrets.token_urlsafe(32)
    with running(
        tmp_path,
        args=["--log-level", "DEBUG"],
        env={"JOBCONTROL_AUTH_TOKEN": token},
    ) as server:
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            good = outcome("SubmitJob", stub, bearer(token))
            not_found = outcome("GetJob", stub, bearer(token))
            bad = {
                form: outcome("SubmitJob", stub, metadata)
                for form, metadata in bad_credentials(token).items()
            }
        listed = grpcurl("-plaintext", "-H", f"authorization: {token}", server.address, "list")
        assert server.stop() == 0

    assert good == OK
    assert not_found == grpc.StatusCode.NOT_FOUND
    assert set(bad.values()) == {grpc.StatusCode.UNAUTHENTICATED}
    assert listed.returncode != 0
    log = server.log
    assert "listening on" in log  # the log was written, and this is the right one
    assert token not in log
    assert token[:16] not in log


# ---- TLS and mTLS --------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN=jobcontrol test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return key, cert


def _make_leaf(
    directory: Path,
    name: str,
    ca_key: Path,
    ca_cert: Path,
    *,
    common_name: str,
    extensions: str,
) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={common_name}",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-set_serial",
        str(secrets.randbits(63)),
        "-days",
        "2",
        "-sha256",
        "-extfile",
        str(ext_file),
        "-out",
        str(cert),
        cwd=directory,
    )
    return key, cert


def make_certs(directory: Path) -> Certs:
    ca_key, ca = _make_ca(directory, "ca")
    other_ca_key, other_ca = _make_ca(directory, "other-ca")
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    server_key, server_cert = _make_leaf(
        directory,
        "server",
        ca_key,
        ca,
        common_name="localhost",
        extensions=leaf
        + "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    client_ext = leaf + "extendedKeyUsage=clientAuth\n"
    client_key, client_cert = _make_leaf(
        directory, "client", ca_key, ca, common_name="test client", extensions=client_ext
    )
    other_client_key, other_client_cert = _make_leaf(
        directory,
        "other-client",
        other_ca_key,
        other_ca,
        common_name="test client",
        extensions=client_ext,
    )
    return Certs(
        directory,
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
        other_ca,
        other_client_cert,
        other_client_key,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _tls_args(certs: Certs) -> list[str]:
    return ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[ServerProcess]:
    with running(tmp_path_factory.mktemp("tls"), args=_tls_args(certs)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[ServerProcess]:
    args = [*_tls_args(certs), "--tls-client-ca", str(certs.ca)]
    with running(tmp_path_factory.mktemp("mtls"), args=args) as server:
        yield server


def tls_submit(
    address: str,
    *,
    root: Path | None,
    client: tuple[Path, Path] | None = None,
    override_name: str | None = None,
) -> grpc.StatusCode:
    """SubmitJob over TLS (or plaintext when `root` is None); the status it ends with."""
    if root is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root.read_bytes(),
            private_key=client[1].read_bytes() if client else None,
            certificate_chain=client[0].read_bytes() if client else None,
        )
        options = [("grpc.ssl_target_name_override", override_name)] if override_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        try:
            response = stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=TIMEOUT)
        except grpc.RpcError as error:
            return error.code()
    assert response.created
    assert response.job.state == job_pb2.JOB_STATE_PENDING
    return OK


def test_tls_client_trusting_the_ca_is_served(tls_server: ServerProcess, certs: Certs):
    assert "(TLS," in tls_server.log
    assert tls_submit(tls_server.address, root=certs.ca) == OK


def test_tls_client_verifies_the_server_name(tls_server: ServerProcess, certs: Certs):
    assert tls_submit(tls_server.address, root=certs.ca, override_name="localhost") == OK
    assert (
        tls_submit(tls_server.address, root=certs.ca, override_name="elsewhere.example")
        == grpc.StatusCode.UNAVAILABLE
    )


def test_tls_server_refuses_a_plaintext_client(tls_server: ServerProcess):
    assert tls_submit(tls_server.address, root=None) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_trusting_another_ca_fails(tls_server: ServerProcess, certs: Certs):
    assert tls_submit(tls_server.address, root=certs.other_ca) == grpc.StatusCode.UNAVAILABLE


def test_grpcurl_lists_services_over_tls_with_the_ca(tls_server: ServerProcess, certs: Certs):
    trusted = grpcurl("-cacert", str(certs.ca), tls_server.address, "list")
    untrusted = grpcurl(
        "-cacert", str(certs.other_ca), tls_server.address, "list", connect_timeout=3
    )
    plaintext = grpcurl("-plaintext", tls_server.address, "list", connect_timeout=3)

    assert trusted.returncode == 0, trusted.stderr
    assert "jobcontrol.v1.JobControl" in trusted.stdout.split()
    assert "grpc.health.v1.Health" in trusted.stdout.split()
    assert untrusted.returncode != 0
    assert "certificate signed by unknown authority" in untrusted.stderr
    assert plaintext.returncode != 0
    assert "jobcontrol.v1.JobControl" not in plaintext.stdout


def test_mtls_client_with_a_certificate_from_the_ca_is_served(
    mtls_server: ServerProcess, certs: Certs
):
    client = (certs.client_cert, certs.client_key)

    assert tls_submit(mtls_server.address, root=certs.ca, client=client) == OK


def test_mtls_client_without_a_certificate_is_refused(mtls_server: ServerProcess, certs: Certs):
    assert tls_submit(mtls_server.address, root=certs.ca) == grpc.StatusCode.UNAVAILABLE


def test_mtls_client_with_a_certificate_from_another_ca_is_refused(
    mtls_server: ServerProcess, certs: Certs
):
    client = (certs.other_client_cert, certs.other_client_key)

    assert tls_submit(mtls_server.address, root=certs.ca, client=client) == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_mtls_server_refuses_a_plaintext_client(mtls_server: ServerProcess):
    assert tls_submit(mtls_server.address, root=None) == grpc.StatusCode.UNAVAILABLE


def test_grpcurl_over_mtls_needs_the_client_certificate(mtls_server: ServerProcess, certs: Certs):
    with_cert = grpcurl(
        "-cacert",
        str(certs.ca),
        "-cert",
        str(certs.client_cert),
        "-key",
        str(certs.client_key),
        mtls_server.address,
        "list",
    )
    without_cert = grpcurl("-cacert", str(certs.ca), mtls_server.address, "list", connect_timeout=3)

    assert with_cert.returncode == 0, with_cert.stderr
    assert "jobcontrol.v1.JobControl" in with_cert.stdout.split()
    assert without_cert.returncode != 0
    assert "jobcontrol.v1.JobControl" not in without_cert.stdout


def test_tls_and_token_together_need_both(tmp_path: Path, certs: Certs):
    token = secrets.token_urlsafe(32)
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    with (
        running(tmp_path, args=_tls_args(certs), env={"JOBCONTROL_AUTH_TOKEN": token}) as server,
        grpc.secure_channel(server.address, credentials) as channel,
    ):
        stub = job_control_pb2_grpc.JobControlStub(channel)
        without = outcome("ListJobs", stub, ())
        with_token = outcome("ListJobs", stub, bearer(token))

    assert without == grpc.StatusCode.UNAUTHENTICATED
    assert with_token == OK


def test_unknown_methods_are_unauthenticated_too_so_they_reveal_nothing(auth_server: AuthServer):
    with auth_server.server.channel() as channel:
        call = channel.unary_unary("/jobcontrol.v1.JobControl/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _server_refuses_to_start(directory: Path, *args: str) -> str:
    """Run jobcontrol-server with bad settings; return what it said on stderr."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "jobcontrol-server"),
            "--listen",
            "127.0.0.1:0",
            "--store-path",
            str(directory / "jobs.db"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr


def test_a_tokens_file_without_tokens_refuses_to_start(tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# nobody yet\n\n")
    stderr = _server_refuses_to_start(tmp_path, "--auth-tokens-file", str(tokens))
    assert "contains no tokens" in stderr


def test_a_missing_tls_file_is_a_clear_error(tmp_path: Path):
    stderr = _server_refuses_to_start(
        tmp_path, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "k")
    )
    assert "cannot read" in stderr
