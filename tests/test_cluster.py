"""`make cluster` as a user runs it: scripts/cluster.py starts a real sqld, two servers
and two workers; a job goes in through one server and is watched through the other; the
signals a terminal sends stop it all, and a child that dies stops the rest. The
README's cluster commands run against it as written, on the test's ports. With
`--store postgres` (`make cluster STORE=postgres`) a real PostgreSQL 15 replaces sqld."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from jobcontrol.v1 import job_control_pb2, job_control_pb2_grpc, job_pb2
from tests.conftest import ROOT, free_port, wait_until
from tests.doc_blocks import blocks

SCRIPT = ROOT / "scripts" / "cluster.py"
README = ROOT / "README.md"
DEFAULTS = {"sqld": "127.0.0.1:8081", "server-1": "127.0.0.1:50051", "server-2": "127.0.0.1:50052"}
TERMINAL = {
    job_pb2.JobState.JOB_STATE_SUCCEEDED,
    job_pb2.JobState.JOB_STATE_FAILED,
    job_pb2.JobState.JOB_STATE_CANCELLED,
}


def children_of(pid: int) -> dict[int, str]:
    """The live processes whose parent is `pid`, with their command lines (from /proc:
    what really runs, not what the script says it started)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found[int(entry.name)] = command.replace(b"\0", b" ").decode().strip()
    return found


def alive(pid: int, command: str) -> bool:
    """Still the same process (a reused pid runs something else)."""
    try:
        now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return now == command and state != "Z"


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class Cluster:
    """scripts/cluster.py running in its own session, as from a terminal."""

    process: subprocess.Popen[str]
    addresses: dict[str, str]
    directory: Path
    lines: list[str] = field(default_factory=list)
    children: dict[int, str] = field(default_factory=dict)
    _reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self) -> None:
        def ready() -> bool:
            if "cluster: ready" in self.output:
                return True
            assert self.process.poll() is None, f"cluster.py exited:\n{self.output}"
            return False

        wait_until(ready, timeout=120, interval=0.05, what="the cluster to be ready")
        self.children = children_of(self.process.pid)

    def child(self, name: str) -> int:
        """The pid of sqld, server-N or worker-N, found by its command line."""
        patterns = {
            "sqld": r"/sqld --db-path",
            "postgres": r"/postgres -D ",
            "server-1": rf"jobcontrol-server --listen {self.addresses['server-1']}$",
            "server-2": rf"jobcontrol-server --listen {self.addresses['server-2']}$",
            "worker-1": r"jobcontrol-worker --name worker-1$",
            "worker-2": r"jobcontrol-worker --name worker-2$",
        }
        [pid] = [p for p, c in self.children.items() if re.search(patterns[name], c)]
        return pid

    def signal(self, signum: signal.Signals) -> None:
        """To the whole foreground group, as a terminal's Ctrl-C does."""
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float = 90) -> int:
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(10)
        return code

    def kill(self) -> None:
        """Whatever is left, when a test fails half-way."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid, command in self.children.items():
            if alive(pid, command):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def channel(self, name: str) -> grpc.Channel:
        return grpc.insecure_channel(self.addresses[name])


StartCluster = Callable[..., Cluster]


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[StartCluster]:
    """`start_cluster()` runs scripts/cluster.py on free ports with its data under
    tmp_path (pass `directory` to reuse one) and waits until it prints that it is ready;
    everything it started is killed when the test ends, whatever happened."""
    started: list[Cluster] = []

    def start(directory: Path | None = None, *, wait: bool = True, store: str = "sqld") -> Cluster:
        store_port, one, two = distinct_free_ports(3)
        directory = directory or tmp_path / "cluster"
        command = [
            sys.executable,
            str(SCRIPT),
            "--store",
            store,
            f"--{store}-port",
            str(store_port),
            "--server-ports",
            f"{one},{two}",
            "--dir",
            str(directory),
        ]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        addresses = {
            store: f"127.0.0.1:{store_port}",
            "server-1": f"127.0.0.1:{one}",
            "server-2": f"127.0.0.1:{two}",
        }
        cluster = Cluster(process, addresses, directory)
        started.append(cluster)
        cluster._reader = threading.Thread(target=cluster.read, daemon=True)
        cluster._reader.start()
        if wait:
            cluster.wait_ready()
        return cluster

    try:
        yield start
    finally:
        for cluster in started:
            cluster.kill()


def assert_all_gone(cluster: Cluster) -> None:
    left = {pid: c for pid, c in cluster.children.items() if alive(pid, c)}
    assert left == {}, f"still running after cluster.py exited: {left}\n{cluster.output}"


def submit(channel: grpc.Channel, seconds: float = 0.2) -> str:
    payload = struct_pb2.Struct()
    payload.update({"seconds": seconds, "steps": 2})
    reply = job_control_pb2_grpc.JobControlStub(channel).SubmitJob(
        job_control_pb2.SubmitJobRequest(type="demo.sleep", payload=payload), timeout=30
    )
    return str(reply.job.id)


def watch(channel: grpc.Channel, job_id: str) -> list[job_pb2.JobEvent]:
    events = []
    stream = job_control_pb2_grpc.JobControlStub(channel).WatchJob(
        job_control_pb2.WatchJobRequest(job_id=job_id), timeout=90
    )
    for response in stream:
        events.append(response.event)
        if response.event.job.state in TERMINAL:
            break
    return events


# ---- the cluster ----------------------------------------------------------------------


def test_a_job_submitted_through_one_server_is_run_by_a_worker_and_watched_through_the_other(
    start_cluster: StartCluster,
):
    cluster = start_cluster()
    for name in ("sqld", "server-1", "server-2"):
        assert cluster.addresses[name] in cluster.output, f"{name}'s address is not printed"
    names = ("sqld", "server-1", "server-2", "worker-1", "worker-2")
    assert {cluster.child(n) for n in names} == set(cluster.children), cluster.children

    with cluster.channel("server-1") as one, cluster.channel("server-2") as two:
        job_id = submit(one)
        events = watch(two, job_id)
        workers = job_control_pb2_grpc.JobControlStub(one).ListWorkers(
            job_control_pb2.ListWorkersRequest(), timeout=30
        )

    assert events[-1].job.state == job_pb2.JobState.JOB_STATE_SUCCEEDED, events[-1]
    ours = {w.id: w.pid for w in workers.workers}
    ran_on = events[-1].job.worker_id
    assert ours.get(ran_on) in {cluster.child("worker-1"), cluster.child("worker-2")}

    cluster.signal(signal.SIGINT)

    assert cluster.wait() == 0, cluster.output
    assert_all_gone(cluster)
    assert cluster.lines[-1] == "cluster: everything stopped", cluster.output


def test_data_survives_a_restart_and_sigterm_stops_it_too(
    start_cluster: StartCluster, tmp_path: Path
):
    directory = tmp_path / "kept"
    first = start_cluster(directory)
    with first.channel("server-2") as channel:
        job_id = submit(channel, seconds=0)
        watch(channel, job_id)
    first.signal(signal.SIGINT)
    assert first.wait() == 0, first.output

    second = start_cluster(directory)  # new ports, same data
    with second.channel("server-1") as channel:
        reply = job_control_pb2_grpc.JobControlStub(channel).GetJob(
            job_control_pb2.GetJobRequest(job_id=job_id), timeout=30
        )
    assert reply.job.state == job_pb2.JobState.JOB_STATE_SUCCEEDED

    second.signal(signal.SIGTERM)

    assert second.wait() == 0, second.output
    assert_all_gone(second)
    assert "cluster: SIGTERM: stopping everything" in second.lines, second.output


def test_a_child_that_dies_is_named_and_the_rest_are_stopped(start_cluster: StartCluster):
    cluster = start_cluster()

    os.kill(cluster.child("server-2"), signal.SIGKILL)

    assert cluster.wait() == 1, cluster.output
    assert_all_gone(cluster)
    [said] = [line for line in cluster.lines if "exited unexpectedly" in line]
    assert said.startswith("cluster: server-2 exited unexpectedly (killed by SIGKILL)"), said
    assert "Traceback" not in cluster.output


def test_a_second_cluster_on_the_same_directory_is_refused_in_one_line(
    start_cluster: StartCluster,
):
    first = start_cluster()
    second = start_cluster(first.directory, wait=False)

    assert second.wait() == 1
    assert second.lines == [
        f"cluster: another cluster (pid {first.process.pid}) is running on {first.directory}: "
        "stop it first, or give this one its own --dir"
    ]
    assert first.process.poll() is None, "the first one carries on"


@pytest.mark.parametrize("owner", ["sqld", "server-2"])
def test_a_taken_port_is_one_line_and_starts_nothing(tmp_path: Path, owner: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sqld, one, two = distinct_free_ports(3)
        if owner == "sqld":
            sqld = port
        else:
            two = port
        # Through the environment, as `CLUSTER_SQLD_PORT=... make cluster` passes them.
        env = {
            **os.environ,
            "CLUSTER_SQLD_PORT": str(sqld),
            "CLUSTER_SERVER_PORTS": f"{one},{two}",
            "CLUSTER_DIR": str(tmp_path / "cluster"),
        }
        result = subprocess.run(
            [sys.executable, str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cluster: port {port} ({owner}) is in use: "), line
    assert not (tmp_path / "cluster" / "sqld").exists()


def test_on_postgres_the_job_goes_through_one_server_and_is_watched_through_the_other(
    start_cluster: StartCluster,
):
    cluster = start_cluster(store="postgres")
    url = f"postgresql://postgres@{cluster.addresses['postgres']}/jobcontrol"
    assert url in cluster.output, "the database URL is not printed"
    assert f"JOB_STORE_BACKEND=postgres DATABASE_URL={url} " in cluster.output
    names = ("postgres", "server-1", "server-2", "worker-1", "worker-2")
    assert {cluster.child(n) for n in names} == set(cluster.children), cluster.children
    [data] = re.findall(r"data in (/tmp/jobcontrol-cluster-pg-\S+), removed", cluster.output)
    assert Path(data, "data", "PG_VERSION").read_text().strip() == "15"
    for name in ("server-1", "server-2", "worker-1", "worker-2"):
        environ = Path(f"/proc/{cluster.child(name)}/environ").read_bytes().split(b"\0")
        assert b"JOB_STORE_BACKEND=postgres" in environ, name

    with cluster.channel("server-1") as one, cluster.channel("server-2") as two:
        job_id = submit(one)
        events = watch(two, job_id)

    assert events[-1].job.state == job_pb2.JobState.JOB_STATE_SUCCEEDED, events[-1]

    cluster.signal(signal.SIGINT)

    assert cluster.wait() == 0, cluster.output
    assert_all_gone(cluster)
    assert not Path(data).exists(), "the throwaway PostgreSQL's directory is left behind"
    assert cluster.lines[-1] == "cluster: everything stopped", cluster.output


def test_make_cluster_passes_store_through():
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "cluster", "STORE=postgres"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry_run.stdout.splitlines()[-1] == ".venv/bin/python scripts/cluster.py --store postgres"


# ---- the README ------------------------------------------------------------------------


def readme_examples() -> list[tuple[str, str, dict[str, list[str]]]]:
    """The README blocks marked `run=cluster`: (where, code, expectations)."""
    found = []
    for block in blocks(README):
        if block.expect is not None and "run=cluster" in block.expect.split():
            found.append((block.where, block.code, block.expectations()))
    return found


def test_the_readme_shows_make_cluster_and_checks_its_examples():
    section = README.read_text(encoding="utf-8").split("### Several machines, on one laptop")
    assert len(section) == 2, "the README has no cluster section"
    assert "make cluster" in section[1].split("\n### ")[0]
    assert readme_examples(), "no README block is marked run=cluster"
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "cluster"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry_run.stdout.splitlines()[-1] == ".venv/bin/python scripts/cluster.py"


def test_the_readme_commands_run_against_the_cluster(start_cluster: StartCluster, tmp_path: Path):
    cluster = start_cluster()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCONTROL_")}
    env["HOME"] = str(tmp_path)

    for where, code, expected in readme_examples():
        for name, default in DEFAULTS.items():
            code = code.replace(default, cluster.addresses[name])
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == int(expected.get("exit", ["0"])[0]), f"{where}:\n{output}"
        for text in expected.get("contains", []):
            assert text in output, f"{where}: {text!r} not in:\n{output}"

    cluster.signal(signal.SIGINT)
    assert cluster.wait() == 0, cluster.output
