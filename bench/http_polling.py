"""The baseline WatchJob replaces: clients polling an HTTP endpoint for a job's state.

The server (`python -m bench.http_polling`, started by `HttpServer.start`) is a small
asyncio HTTP/1.1 server from the standard library: `GET /jobs/{id}` answers the job as
JSON (`convert.job_to_json`, what grpcurl prints) read with `JobStore.get_job` from the
same store the gRPC server uses (it reads JOB_STORE_* from the environment), keeping
connections alive as a browser or an HTTP client library would.

The clients (`poll`) are asyncio tasks in the benchmark process, one keep-alive socket
each, each polling every PERIOD seconds from its own random phase, as independent
browser tabs would. Each poll records (percent, send time of the progress seen, arrival
time): the same triples a WatchJob watcher records, so both are scored by the same code
(`progress_latency.covered`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import backends, procs
from jobcontrol.convert import job_to_json
from jobcontrol.errors import JobControlError
from jobcontrol.store import StoreConfig, open_store

PERIOD = 2.0  # seconds between one client's polls
_PATH = re.compile(rb"GET /jobs/([0-9A-Za-z-]+) HTTP/1\.[01]")

# One poll's answer: (percent, send time of that progress (from its message), arrival).
Poll = tuple[float, float, float]


# ---- the server ----------------------------------------------------------------------


async def _serve(port: int) -> None:
    store = await open_store(StoreConfig.from_env())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = _PATH.match(head)
                if found is None:
                    status, body = "404 Not Found", b"{}"
                else:
                    try:
                        job = await store.get_job(found.group(1).decode())
                        status, body = "200 OK", json.dumps(job_to_json(job)).encode()
                    except JobControlError as error:
                        status, body = "404 Not Found", json.dumps(str(error)).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    host, bound = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{bound}", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        await store.close()


class HttpServer(procs.Process):
    address: tuple[str, int]

    @classmethod
    def start(cls, log_path: Path, config: StoreConfig) -> HttpServer:
        command = [sys.executable, "-m", "bench.http_polling", "--port", "0"]
        server = cls(procs.spawn(command, log_path, backends.store_env(config)), log_path)
        found = procs.wait_for_log(server, procs.LISTENING, "the HTTP server")
        server.address = (found.group(1), int(found.group(2)))
        return server


# ---- the clients ---------------------------------------------------------------------


async def _client(
    address: tuple[str, int],
    job_id: str,
    start: float,
    until: Callable[[], float],
    polls: list[Poll],
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    request = f"GET /jobs/{job_id} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        due = start
        while due <= until():
            await asyncio.sleep(max(0.0, due - time.time()))
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            arrived = time.time()
            progress = json.loads(body).get("progress", {})
            with contextlib.suppress(ValueError):  # no timestamped update yet
                sent = float(progress.get("message", ""))
                polls.append((progress.get("percent", 0.0), sent, arrived))
            due += PERIOD
    finally:
        writer.close()


async def poll(
    address: tuple[str, int],
    job_id: str,
    clients: int,
    started: float,
    until: Callable[[], float],
) -> list[list[Poll]]:
    """`clients` pollers of `job_id`, from `started` (each at a random phase within the
    first PERIOD) while `until()` (a time.time()) has not passed; each one's polls."""
    found: list[list[Poll]] = [[] for _ in range(clients)]
    await asyncio.gather(
        *(
            _client(address, job_id, started + random.uniform(0, PERIOD), until, polls)
            for polls in found
        )
    )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_polling", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
