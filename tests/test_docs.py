"""The documentation ships with the code and runs as written.

- Every ```sh or ```python block of README.md and docs/*.md is either run by a test (an
  `<!-- expect: ... -->` comment under it) or marked `<!-- not run: why -->`
  (tests/doc_blocks.py has the format).
- README.md and docs/job-types.md are run as a reader follows them: the blocks of one
  document in order, the shell ones in one bash session (so `ID=...` carries over), the
  Python ones with the project's interpreter, against a server started as `make run`
  starts it. The one difference: the server listens on a free port, so `127.0.0.1:50051`
  in a block becomes its address, and `JOBCONTROL_ADDR` (jobctl's default) is set to it.
  Their expect comments hold `contains="..."` and `match="regex"` (per line); a block
  must also get to its end (exit 0). Blocks marked `<!-- file: PATH -->` are written into
  a fresh project folder, and blocks marked `run=project` run there, in a shell of their
  own with the project's virtualenv first on PATH (as a reader with it activated).
  README blocks marked `run=cluster` run in tests/test_cluster.py.
- docs/ops.md is run example by example against servers with and without a token, TLS
  and mTLS; its comments also say which server (`server=plain|token|tls|mtls`), which
  job `$JOB_ID` names (`job=pending|cancelled|succeeded|failed`, a fresh one each), and
  the exit code (`exit=N`, default 0). The variables the runbook uses (ADDR, TOKEN,
  CA_CERT, CLIENT_CERT, CLIENT_KEY, JOB_ID) are set, and grpcurl and jobctl are on PATH.
- Relative links in README.md and docs/*.md lead to tracked files (and headings), and no
  tracked file points at design notes outside the repository.
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
from tests.conftest import BIN, ROOT, ServerProcess, start_server, wait_until
from tests.doc_blocks import (
    PYTHON,
    SHELL,
    Block,
    Ran,
    ShellSession,
    anchors,
    blocks,
    check,
    links,
    run_python,
)
from tests.server.test_auth_tls import make_certs

README = ROOT / "README.md"
OPS = ROOT / "docs" / "ops.md"
JOB_TYPES = ROOT / "docs" / "job-types.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# Documents a reader follows from top to bottom against `make run`.
WALKTHROUGHS = [README, JOB_TYPES]
MAKE_RUN_ADDRESS = "127.0.0.1:50051"
MAKE_RUN_HTTP_ADDRESS = "127.0.0.1:8080"
_HTTP_LINE = re.compile(r"HTTP API on http://(\S+:\d+)")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any JOBCONTROL_ setting of the machine it runs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCONTROL_")}
    env.update(extra, HOME=str(home))
    return env


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


# ---- every document ----------------------------------------------------------------------


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_runnable_block_is_run_or_marked_not_run(document: Path):
    found = blocks(document)
    unnamed = [b.where for b in found if not b.lang]
    unmarked = [b.where for b in found if b.runnable and not b.marked]
    unexplained = [b.where for b in found if b.not_run == ""]
    unnamed_files = [b.where for b in found if b.file == ""]

    assert unnamed == [], f"code blocks without a language: {unnamed}"
    assert unmarked == [], f"blocks neither run by a test nor marked `not run`: {unmarked}"
    assert unexplained == [], f"`not run` needs a reason: {unexplained}"
    assert unnamed_files == [], f"`file:` needs a path: {unnamed_files}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_lead_to_tracked_files_and_headings(document: Path):
    tracked = {ROOT / name for name in tracked_files()}
    folders = {parent for path in tracked for parent in path.parents}
    broken = []
    for target in links(document):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if resolved not in tracked and resolved not in folders:
            broken.append(f"{target}: no such file in the repository")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")

    assert broken == [], f"{document.name}: {broken}"


def test_no_tracked_file_points_at_design_notes_outside_the_repository():
    outside = re.compile(r"\.\./shared|DESIG[N](?:\.md| §)")  # spelt so it finds no word here
    found = []
    for name in tracked_files():
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue  # binary, a submodule, or deleted in the working tree
        found += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}" for m in outside.finditer(text)]

    assert found == [], f"point these at docs/architecture.md instead: {found}"


def test_the_readme_links_the_reference_documents():
    targets = {target.partition("#")[0] for target in links(README)}

    assert {"docs/architecture.md", "docs/job-types.md", "docs/ops.md"} <= targets


def test_the_block_reader_sees_languages_markers_and_headings(tmp_path: Path):
    document = tmp_path / "doc.md"
    document.write_text(
        "# A `demo.sleep` title\n\n## Same\n\n## Same\n\n"
        '```sh\necho run\n```\n<!-- expect: contains="run me" -->\n\n'
        "```python\nprint(1)\n```\n\n<!-- not run: a module -->\n\n"
        "```bash\necho forgotten\n```\n\n"
        "```text\na diagram\n```\n\n"
        "```python\nVALUE = 1\n```\n<!-- file: pkg/mod.py -->\n",
        encoding="utf-8",
    )

    found = blocks(document)

    assert [(b.lang, b.line) for b in found] == [
        ("sh", 8),
        ("python", 13),
        ("bash", 19),
        ("text", 23),
        ("python", 27),
    ]
    assert found[0].expectations() == {"contains": ["run me"]}
    assert found[1].not_run == "a module"
    assert found[4].file == "pkg/mod.py"
    assert [b.runnable and not b.marked for b in found] == [False, False, True, False, False]
    assert anchors(document) == {"a-demosleep-title", "same", "same-1"}
    written = found[4].write_into(tmp_path / "project")
    assert written.read_text(encoding="utf-8") == "VALUE = 1\n"


def test_a_shell_session_keeps_variables_and_stops_at_the_first_failure():
    with ShellSession(cwd=ROOT, env=clean_env(ROOT)) as shell:
        first = shell.run("NAME=kept\necho set")
        second = shell.run("echo $NAME; printf 'no newline'")
        failed = shell.run("false\necho never")
        after = shell.run("echo never")

    assert first == Ran(0, "set\n")
    assert second == Ran(0, "kept\nno newline")
    assert failed == Ran(1, "")
    assert after.exit_code == 1


# ---- README.md and docs/job-types.md, as a reader follows them --------------------------


@pytest.fixture(scope="module")
def make_run_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """What `make run` starts, on a free port and a fresh store."""
    server = start_server(
        tmp_path_factory.mktemp("make-run"),
        args=["--with-worker", "--http-listen", "127.0.0.1:0"],
    )
    try:
        yield server
    finally:
        server.stop()


def walkthrough(document: Path) -> list[Block]:
    """The blocks a reader runs against `make run` or writes into a project, in order."""
    chosen = []
    for block in blocks(document):
        if not block.runnable:
            continue
        if block.file is not None:
            chosen.append(block)
            continue
        if block.expect is None:
            continue
        expected = block.expectations()
        for key in expected:
            assert key in {"run", "contains", "match"}, f"{block.where}: {key}?"
        run = where_it_runs(block)
        assert run in {"server", "project", "cluster"}, f"{block.where}: run={run}?"
        if run != "cluster":
            chosen.append(block)
    return chosen


def where_it_runs(block: Block) -> str:
    return block.expectations().get("run", ["server"])[-1]


def test_make_run_starts_the_server_the_walkthroughs_run_against():
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert dry_run.stdout.splitlines()[-1] == (
        f".venv/bin/jobcontrol-server --with-worker --http-listen {MAKE_RUN_HTTP_ADDRESS}"
    )


def test_the_readme_shows_jobctl_and_both_python_clients():
    shell = "\n".join(b.code for b in walkthrough(README) if b.lang in SHELL)
    python = "\n".join(b.code for b in walkthrough(README) if b.lang in PYTHON)

    for command in ("submit", "get", "cancel", "watch", "list", "workers"):
        assert re.search(rf"jobctl {command}\b", shell), f"no `jobctl {command}` in the README"
    assert "--watch" in shell
    assert "jobctl top --once" in shell
    assert "grpcurl" in shell
    assert "curl -s -H 'Content-Type: application/json'" in shell
    assert "JobControlClient(" in python
    assert "AsyncJobControlClient(" in python
    assert "jobcontrol.worker.testing" in python


@pytest.mark.parametrize("document", WALKTHROUGHS, ids=lambda p: p.name)
def test_walkthrough_runs_as_written(
    document: Path, make_run_server: ServerProcess, tmp_path: Path
):
    chosen = walkthrough(document)
    assert chosen, f"{document.name} has no block to run"
    env = clean_env(tmp_path, JOBCONTROL_ADDR=make_run_server.address)
    http = _HTTP_LINE.search(make_run_server.log)
    assert http, make_run_server.log
    project = tmp_path / "project"
    project.mkdir()
    # The reader's own project, with the virtualenv holding jobcontrol activated.
    project_env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}

    with ShellSession(cwd=ROOT, env=env) as shell:
        for block in chosen:
            if block.file is not None:
                block.write_into(project)
                continue
            code = block.code.replace(MAKE_RUN_ADDRESS, make_run_server.address).replace(
                MAKE_RUN_HTTP_ADDRESS, http.group(1)
            )
            ran: Ran
            if where_it_runs(block) == "project":
                assert block.lang in SHELL, f"{block.where}: run=project is for shell blocks"
                with ShellSession(cwd=project, env=project_env) as project_shell:
                    ran = project_shell.run(code)
            elif block.lang in PYTHON:
                ran = run_python(code, cwd=ROOT, env=env, name=f"block_{block.line}")
            else:
                ran = shell.run(code)
            check(block, ran)


# ---- docs/ops.md, example by example ------------------------------------------------------

SERVERS = ("plain", "token", "tls", "mtls")
JOBS = ("pending", "cancelled", "succeeded", "failed")


@dataclass(frozen=True)
class Example:
    block: Block
    server: str = "plain"
    job: str | None = None
    exit: int = 0

    @property
    def id(self) -> str:
        return self.block.where


def parse(block: Block) -> Example:
    found = block.expectations()
    for key in found:
        assert key in {"server", "job", "exit", "match", "contains"}, f"{block.where}: {key}?"
    settings = {key: values[-1] for key, values in found.items()}
    example = Example(
        block=block,
        server=settings.get("server", "plain"),
        job=settings.get("job"),
        exit=int(settings.get("exit", "0")),
    )
    assert example.server in SERVERS, example
    assert example.job is None or example.job in JOBS, example
    assert "contains" in found or "match" in found, f"{example.id} checks nothing"
    return example


EXAMPLES = [parse(b) for b in blocks(OPS) if b.expect is not None]


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
    assert len(EXAMPLES) >= 30
    for rpc in rpcs:
        calls = [e for e in EXAMPLES if f"jobcontrol.v1.JobControl/{rpc}\n" in e.block.code + "\n"]
        with_token = [e for e in calls if "Bearer $TOKEN" in e.block.code and e.server == "token"]
        without = [e for e in calls if "authorization" not in e.block.code and e.server == "plain"]
        assert with_token, f"{rpc} has no example with a token"
        assert without, f"{rpc} has no example without a token"
    watches = [e.block.code for e in EXAMPLES if "JobControl/WatchJob" in e.block.code]
    assert any("after_sequence" in code for code in watches)
    assert any("after_sequence" not in code for code in watches)
    assert any("Health/Check" in e.block.code for e in EXAMPLES)
    assert any("-cacert" in e.block.code for e in EXAMPLES)


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
        wait_until(
            lambda: client.get(job.id).state is JobState(state.upper()),
            timeout=30,
            what=f"job {job.id} to be {state}",
        )
        return job.id


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_runbook_example(example: Example, targets: dict[str, Target], tmp_path: Path):
    target = targets[example.server]
    env = clean_env(tmp_path, **target.env, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if example.job is not None:
        env["JOB_ID"] = prepare_job(target, example.job)

    with ShellSession(cwd=tmp_path, env=env) as shell:
        ran = shell.run(example.block.code)

    check(example.block, ran, exit_code=example.exit)
