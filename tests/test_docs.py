"""Every command in docs/ops.md, run against real servers and checked.

A ```sh block followed by `<!-- expect: ... -->` is a checked example. The comment says
which server it runs against (`server=plain|token|tls|mtls`, all with an in-process
worker), which job `$JOB_ID` names (`job=pending|cancelled|succeeded|failed`, a fresh
one per example), the exit code (`exit=N`, default 0), and what the output must hold
(`contains="..."`, repeatable; `match="regex"`). The variables the runbook uses (ADDR,
TOKEN, CA_CERT, CLIENT_CERT, CLIENT_KEY, JOB_ID) are set for each block, which runs in
`bash -euo pipefail` with grpcurl and jobctl on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobcontrol.client import JobControlClient, JobState, TlsOptions
from tests.clients.conftest import server_dir
from tests.conftest import BIN, ROOT, ServerProcess, start_server, wait_for
from tests.doc_blocks import Block
from tests.doc_blocks import blocks as doc_blocks
from tests.server.test_auth_tls import make_certs

DOC = ROOT / "docs" / "ops.md"
SERVERS = ("plain", "token", "tls", "mtls")
JOBS = ("pending", "cancelled", "succeeded", "failed")


@dataclass(frozen=True)
class Example:
    line: int
    code: str
    server: str = "plain"
    job: str | None = None
    exit: int = 0
    contains: tuple[str, ...] = ()
    match: str | None = None

    @property
    def id(self) -> str:
        return f"ops.md:{self.line}"


def blocks() -> list[Block]:
    return doc_blocks(DOC)


def parse(block: Block) -> Example:
    found = block.expectations()
    for key in found:
        assert key in {"server", "job", "exit", "match", "contains"}, f"ops.md:{block.line}: {key}?"
    settings = {key: values[-1] for key, values in found.items()}
    example = Example(
        line=block.line,
        code=block.code,
        server=settings.get("server", "plain"),
        job=settings.get("job"),
        exit=int(settings.get("exit", "0")),
        contains=tuple(found.get("contains", ())),
        match=settings.get("match"),
    )
    assert example.server in SERVERS, example
    assert example.job is None or example.job in JOBS, example
    assert example.contains or example.match, f"{example.id} checks nothing"
    return example


EXAMPLES = [parse(b) for b in blocks() if b.expect is not None]


# ---- the runbook itself ----------------------------------------------------------------


def test_every_grpcurl_block_in_the_runbook_is_checked():
    unchecked = [b.line for b in blocks() if "grpcurl" in b.code and b.expect is None]

    assert unchecked == [], f"ops.md blocks at lines {unchecked} have no expect comment"
    assert len(EXAMPLES) >= 30


def test_the_runbook_shows_every_rpc_with_and_without_a_token():
    rpcs = [
        "SubmitJob",
        "SubmitJobs",
        "GetJob",
        "ListJobs",
        "WatchJob",
        "CancelJob",
        "RetryJob",
        "ListWorkers",
    ]
    for rpc in rpcs:
        calls = [e for e in EXAMPLES if f"jobcontrol.v1.JobControl/{rpc}\n" in e.code + "\n"]
        with_token = [e for e in calls if "Bearer $TOKEN" in e.code and e.server == "token"]
        without = [e for e in calls if "authorization" not in e.code and e.server == "plain"]
        assert with_token, f"{rpc} has no example with a token"
        assert without, f"{rpc} has no example without a token"
    watches = [e.code for e in EXAMPLES if "JobControl/WatchJob" in e.code]
    assert any("after_sequence" in code for code in watches)
    assert any("after_sequence" not in code for code in watches)
    assert any("Health/Check" in e.code for e in EXAMPLES)
    assert any("-cacert" in e.code for e in EXAMPLES)


# ---- the servers the examples run against ----------------------------------------------


@dataclass
class Target:
    server: ServerProcess
    tls: TlsOptions | None = None
    token: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> JobControlClient:
        return JobControlClient(self.server.address, token=self.token, tls=self.tls)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    directory = tmp_path_factory.mktemp("ops-doc")
    certs = make_certs(server_dir(directory, "certs"))
    token = "ops-doc-token"
    tls_args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    worker = ["--with-worker"]
    started: dict[str, Target] = {}
    try:
        started["plain"] = Target(start_server(server_dir(directory, "plain"), args=worker))
        started["token"] = Target(
            start_server(
                server_dir(directory, "token"), args=worker, env={"JOBCONTROL_AUTH_TOKEN": token}
            ),
            token=token,
        )
        server_tls = TlsOptions.from_files(ca=certs.ca)
        started["tls"] = Target(
            start_server(server_dir(directory, "tls"), args=[*worker, *tls_args]), tls=server_tls
        )
        started["mtls"] = Target(
            start_server(
                server_dir(directory, "mtls"),
                args=[*worker, *tls_args, "--tls-client-ca", str(certs.ca)],
            ),
            tls=TlsOptions.from_files(ca=certs.ca, cert=certs.client_cert, key=certs.client_key),
        )
        shared = {
            "TOKEN": token,
            "CA_CERT": str(certs.ca),
            "CLIENT_CERT": str(certs.client_cert),
            "CLIENT_KEY": str(certs.client_key),
        }
        for target in started.values():
            target.env = {**shared, "ADDR": target.server.address}
        yield started
    finally:
        for target in started.values():
            target.server.stop()


def prepare_job(target: Target, state: str) -> str:
    """A fresh job in `state`, made through the Python client."""
    payloads = {
        "pending": ({}, 3600.0),  # delayed: the worker leaves it alone
        "cancelled": ({}, 3600.0),
        "succeeded": ({"seconds": 0, "steps": 1}, None),
        "failed": ({"seconds": 0, "steps": 1, "fail": "permanent"}, None),
    }
    payload, delay = payloads[state]
    with target.client() as client:
        job = client.submit("demo.sleep", payload, delay=delay)
        if state == "cancelled":
            client.cancel(job.id)
        wait_for(
            lambda: client.get(job.id).state is JobState(state.upper()),
            timeout=30,
            what=f"job {job.id} to be {state}",
        )
        return job.id


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_runbook_example(example: Example, targets: dict[str, Target], tmp_path: Path):
    target = targets[example.server]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCONTROL_")}
    env.update(target.env, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path))
    if example.job is not None:
        env["JOB_ID"] = prepare_job(target, example.job)

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example.code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == example.exit, f"{example.id} exited {result.returncode}:\n{output}"
    for expected in example.contains:
        assert expected in output, f"{example.id}: {expected!r} not in:\n{output}"
    if example.match is not None:
        assert re.search(example.match, result.stdout), f"{example.id}: no {example.match!r}"
