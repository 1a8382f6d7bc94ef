"""`jobcontrol-server --processes N`: real supervisors and children on one port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import (
    ROOT,
    ServerProcess,
    read_metrics,
    run_cli,
    start_server,
    wait_until,
    wait_until_async,
)

K = pb.EventKind
_SERVING = re.compile(r"process (\d+) of (\d+) \(pid (\d+)\) serving on")
CHANNELS = 40
STREAMS = 200


def serving_pids(server: ServerProcess) -> dict[int, int]:
    """Process number -> pid of the latest child to say it serves."""
    return {int(n): int(pid) for n, _, pid in _SERVING.findall(server.log)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """Established TCP connections to `port` that each pid holds, from /proc: the OS's
    own account of which process serves which connection."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    held = {}
    for pid in pids:
        links = [os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()]
        held[pid] = sum(1 for link in links if link[len("socket:[") : -1] in inodes)
    return held


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path, args=["--processes", "2"])
    try:
        yield server
    finally:
        server.stop()


async def test_streams_spread_over_both_processes_and_each_sees_its_job_to_the_end(
    two_processes: ServerProcess,
):
    server = two_processes
    pids = list(serving_pids(server).values())
    assert len(pids) == 2
    channels = [
        # A local subchannel pool: one TCP connection per channel, as separate clients have.
        grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    stubs = [job_control_pb2_grpc.JobControlStub(channel) for channel in channels]
    submitted = await stubs[0].SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=10)
    opened = 0

    async def watch(index: int) -> list[pb.JobEvent]:
        nonlocal opened
        call = stubs[index % CHANNELS].WatchJob(
            api.WatchJobRequest(job_id=submitted.job.id), timeout=120
        )
        events = []
        async for message in call:
            if not events:
                opened += 1
            events.append(message.event)
        return events

    try:
        watchers = [asyncio.create_task(watch(i)) for i in range(STREAMS)]
        await wait_until_async(lambda: opened == STREAMS, timeout=60, what="every snapshot")

        held = connections_by_pid(int(server.address.rsplit(":", 1)[1]), pids)
        assert sum(held.values()) == CHANNELS, held
        assert all(count > 0 for count in held.values()), held

        driver = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.server.job_driver"),
            *(str(server.store_path), submitted.job.id),
            cwd=ROOT,
        )
        assert await driver.wait() == 0
        results = await asyncio.wait_for(asyncio.gather(*watchers), timeout=120)
    finally:
        for channel in channels:
            await channel.close()

    for events in results:
        transitions = [
            e.kind
            for e in events
            if e.kind not in (K.EVENT_KIND_PROGRESS, K.EVENT_KIND_QUEUE_POSITION)
        ]
        assert transitions == [
            K.EVENT_KIND_SNAPSHOT,
            K.EVENT_KIND_STARTED,
            K.EVENT_KIND_RETRY_SCHEDULED,
            K.EVENT_KIND_STARTED,
            K.EVENT_KIND_SUCCEEDED,
        ]
        assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_process_and_the_supervisor_exits_0(
    two_processes: ServerProcess, signum: signal.Signals
):
    pids = list(serving_pids(two_processes).values())
    two_processes.process.send_signal(signum)
    assert two_processes.process.wait(30) == 0
    assert not any(alive(pid) for pid in pids)
    log = two_processes.log
    assert f"{signum.name}: stopping 2 processes" in log
    assert log.count("shutting down: ending streams") == 2, log
    assert "stopped" in log.splitlines()[-1]


def test_a_process_killed_with_9_is_restarted_and_the_port_keeps_serving(
    two_processes: ServerProcess,
):
    server = two_processes
    first = serving_pids(server)[1]
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: serving_pids(server)[1] != first, timeout=30, what="process 1 to be restarted"
    )
    assert f"process 1 of 2 (pid {first}) exited with code -9; restarting it" in server.log
    restarted = serving_pids(server)
    assert all(alive(pid) for pid in restarted.values())
    for _ in range(CHANNELS):  # new connections, to either process, are served
        with grpc.insecure_channel(
            server.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=10)
    assert server.stop() == 0


def test_children_stop_when_the_supervisor_is_killed_with_9(two_processes: ServerProcess):
    pids = list(serving_pids(two_processes).values())
    two_processes.kill()
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30, what="the children to stop")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_second_server_on_a_served_port_fails_in_one_line(
    two_processes: ServerProcess, tmp_path: Path, processes: str
):
    result = run_cli(
        "jobcontrol-server",
        "--processes",
        processes,
        "--listen",
        two_processes.address,
        "--store-path",
        str(tmp_path / "other.db"),
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"jobcontrol-server: cannot listen on {two_processes.address}: the port is already "
        "in use (is another server running?)\n"
    )
    assert not (tmp_path / "other.db").exists()


def test_a_process_that_cannot_start_stops_the_server_in_one_line(tmp_path: Path):
    (tmp_path / "jobs.db").write_text("not a database")
    result = run_cli(
        "jobcontrol-server",
        "--processes",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--store-path",
        str(tmp_path / "jobs.db"),
        "--log-level",
        "warning",
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("jobcontrol-server: cannot open the store: "), result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--processes", "0"], {}), ([], {"JOBCONTROL_PROCESSES": "two"})],
)
def test_a_bad_process_count_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str]
):
    result = run_cli("jobcontrol-server", "--store-path", str(tmp_path / "jobs.db"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("jobcontrol-server: argument --processes: ")
    assert not (tmp_path / "jobs.db").exists()


def test_metrics_and_the_in_process_worker_run_in_the_first_process_only(tmp_path: Path):
    server = start_server(tmp_path, args=["--processes", "2", "--with-worker"], metrics=True)
    try:
        first = serving_pids(server)[1]
        assert server.metrics_address is not None
        samples = read_metrics(server.metrics_address)
        assert ("jobcontrol_event_loop_lag_seconds_count", ()) in samples
        assert "(process 1 of 2: its own calls and streams only)" in server.log
        workers = re.findall(r"worker \S+:(\d+) \(", server.log)
        assert workers == [str(first)], server.log
    finally:
        assert server.stop() == 0
