"""`jobcontrol-server --processes N`: 10,000 WatchJob streams on one job, served by one
process and by two, side by side in each run.

Each run, for each N: a fresh SQLite store and `jobcontrol-server --processes N`; one
job, claimed by this process as a worker would, watched by every stream (opened in
waves over many connections, which the kernel spreads over the N processes). Then:

- RSS: the sum over the server's processes (the supervisor, its children and
  multiprocessing's resource tracker) with the streams open and idle;
- burst: UPDATES progress writes SPACING apart, until every stream has the last one:
  the server's CPU time (all its processes) per 1,000 messages delivered, and how long
  the last update took to reach every stream;
- connections: how many of the streams' connections each server process holds.

The streams are read by CLIENTS client processes (`--clients`), each on connections
of its own; on a 2-core machine they compete with the server processes for the cores,
which caps what a second server process can show.

Run: `.venv/bin/python -m bench.processes [--runs N] [--streams 10000]`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import backends, procs, report, rpc, streams
from bench.progress_latency import percent_of, write_updates
from bench.report import Headline
from bench.stats import Figures
from jobcontrol.store import open_store
from jobcontrol.v1 import job_pb2 as pb

STREAMS = 10_000
CLIENTS = 2
PROCESSES = (1, 2)
SETTLE = 1.0
UPDATES = 3
SPACING = 0.05


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        if procs.alive(current):
            found.append(current)
            pending += procs.children(current)
    return found


def tree_rss_bytes(pid: int) -> int:
    return sum(procs.rss_bytes(p) for p in process_tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(procs.cpu_seconds(p) for p in process_tree(pid))


def connections_by_pid(port: int, pids: Sequence[int]) -> dict[int, int]:
    """Established connections to `port` each pid holds, from /proc/net/tcp and fds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    held = {}
    for pid in pids:
        links = []
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            try:
                links.append(os.readlink(entry))
            except FileNotFoundError:
                continue
        held[pid] = sum(1 for link in links if link[len("socket:[") : -1] in inodes)
    return {pid: n for pid, n in held.items() if n}


class LastSeen:
    """Counts the streams whose latest progress event is the burst's last update."""

    def __init__(self, watching: streams.Streams) -> None:
        self.watching = watching
        self.final = percent_of(UPDATES, UPDATES)
        self.seen: set[int] = set()
        watching.on_event = self._on_event

    def _on_event(self, index: int, event: pb.JobEvent, _: float) -> None:
        if event.kind == pb.EVENT_KIND_PROGRESS and event.job.progress.percent >= self.final:
            self.seen.add(index)

    def all_saw_last(self) -> bool:
        return len(self.seen) >= len(self.watching)


def _client(address: str, job_id: str, count: int, pipe: Connection) -> None:
    """A client process: `count` streams on the job; says ("opened",), then, once every
    stream has seen the burst's last update, ("done", time.time(), messages); then
    closes its streams when told to."""
    rpc.run(_read_streams(address, job_id, count, pipe))


async def _read_streams(address: str, job_id: str, count: int, pipe: Connection) -> None:
    async with rpc.stubs(address, streams.connections_for(count)) as stubs:
        watching = streams.Streams(stubs, [job_id])
        try:
            await watching.open(count)
            last = LastSeen(watching)
            received = watching.received
            pipe.send(("opened",))
            await rpc.until(last.all_saw_last, "every stream to see the last update", wait=300)
            pipe.send(("done", time.time(), watching.received - received))
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        finally:
            await watching.close()


async def one_server(directory: Path, processes: int, total: int, clients: int) -> dict[str, float]:
    with backends.serve("sqlite", directory / "jobs.db") as db, procs.fleet() as fleet:
        server = procs.Server.start(
            directory / f"server-{processes}.log", db.config, args=["--processes", str(processes)]
        )
        fleet.add(server)
        store = await open_store(db.config)
        try:
            async with rpc.stubs(server.address) as stubs:
                (job_id,) = await rpc.submit(stubs[0], [rpc.request("bench.processes")])
            (job,) = await store.claim_jobs(
                worker_id="bench-processes",
                types=["bench.processes"],
                limit=1,
                lease_timeout=timedelta(minutes=10),
            )
            assert job.lease_id is not None
            readers = []
            context = multiprocessing.get_context("spawn")
            for index in range(clients):
                pipe, child_end = context.Pipe()
                share = total // clients + (1 if index < total % clients else 0)
                reader = context.Process(
                    target=_client, args=(server.address, job_id, share, child_end)
                )
                reader.start()
                readers.append((reader, pipe))
            try:
                began = time.perf_counter()
                for _, pipe in readers:
                    assert (await _receive(pipe))[0] == "opened"
                opening = time.perf_counter() - began
                await asyncio.sleep(SETTLE)
                rss = tree_rss_bytes(server.pid)
                held = connections_by_pid(
                    int(server.address.rsplit(":", 1)[1]), process_tree(server.pid)
                )
                cpu = tree_cpu_seconds(server.pid)
                sent = await write_updates(store, job_id, job.lease_id, UPDATES, SPACING)
                done = [await _receive(pipe) for _, pipe in readers]
                cpu_used = tree_cpu_seconds(server.pid) - cpu
                reached_all = max(when for _, when, _ in done) - sent[-1]
                messages = sum(count for _, _, count in done)
            finally:
                for reader, pipe in readers:
                    if reader.is_alive():
                        pipe.send("close")
                    reader.join(60)
        finally:
            await store.close()
    shares = sorted(held.values(), reverse=True)
    print(
        f" {processes} process(es): {rss / 2**20:.0f} MiB, connections per process {shares},"
        f" {1e6 * cpu_used / messages:.0f} ms CPU/1k msgs, last update to all"
        f" {1000 * reached_all:.0f} ms;",
        end="",
        flush=True,
    )
    return {
        "open_seconds": opening,
        "rss_mib": rss / 2**20,
        "cpu_ms_per_1000_messages": 1e6 * cpu_used / messages,
        "last_update_to_all_ms": 1000 * reached_all,
        "delivered_percent": 100 * messages / (UPDATES * total),
        "busiest_process_connection_percent": 100 * shares[0] / sum(shares),
    }


async def _receive(pipe: Connection) -> Any:
    """A client's next message; a client that died is an error, not a hang."""
    if not await asyncio.get_running_loop().run_in_executor(None, pipe.poll, 600):
        raise RuntimeError("a client process did not report within 600 s")
    return pipe.recv()


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("processes", __doc__)
    parser.add_argument(
        "--streams", type=int, default=STREAMS, help=f"streams (default {STREAMS:,})"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS,
        help=f"client processes reading the streams (default {CLIENTS})",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    figures = Figures()
    for _, directory in report.run_directories(args.runs):
        for processes in PROCESSES:
            run_dir = directory / f"p{processes}"
            run_dir.mkdir()
            found = rpc.run(one_server(run_dir, processes, args.streams, args.clients))
            figures.add_all(found, prefix=f"{processes}.")
    elapsed = time.perf_counter() - began

    def cell(processes: int, key: str) -> str:
        return figures[f"{processes}.{key}"].cell(0)

    rows = [
        (
            str(processes),
            cell(processes, "rss_mib"),
            cell(processes, "cpu_ms_per_1000_messages"),
            cell(processes, "last_update_to_all_ms"),
            f"{figures[f'{processes}.delivered_percent'].median:.0f}%",
            f"{figures[f'{processes}.busiest_process_connection_percent'].median:.0f}%",
            f"{figures[f'{processes}.open_seconds'].median:.1f}",
        )
        for processes in PROCESSES
    ]
    print(
        report.table(
            f"--processes: {args.streams:,} WatchJob streams on one job, median of "
            f"{args.runs} runs (min-max)",
            (
                "processes",
                "RSS MiB (all)",
                "CPU ms/1k msgs",
                "last update to all, ms",
                "delivered",
                "busiest process's connections",
                "open s",
            ),
            rows,
            notes=[
                "RSS: summed over the supervisor, its children and the resource tracker, "
                "streams open and idle;",
                f"burst: {UPDATES} progress writes {SPACING * 1000:.0f} ms apart; CPU of "
                "every server process per 1,000 messages delivered;",
                f"streams read by {args.clients} client processes, which share the "
                f"machine's {os.cpu_count()} cores with the server.",
            ],
        )
    )
    headlines = [
        Headline.of(
            "processes",
            f"last update to all {args.streams:,} streams, --processes {processes}",
            "sqlite",
            figures[f"{processes}.last_update_to_all_ms"],
            "ms",
        )
        for processes in PROCESSES
    ]
    return report.finish(
        "processes",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={
            "streams": args.streams,
            "processes": list(PROCESSES),
            "updates": UPDATES,
            "spacing_ms": SPACING * 1000,
        },
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
