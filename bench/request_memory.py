"""Server memory under many clients each sending the largest valid SubmitJobs at once.

`python -m bench.request_memory [--clients 1,50,100]` starts a real server per row
and has N clients send a ~16 MiB SubmitJobs at the same moment, then prints the
server's peak RSS (VmHWM) and how the calls ended. Two shapes of batch: jobs whose
payloads have 50,000 small fields (the costliest to convert, ~30 times their size)
and jobs whose payload is one ~1 MiB string (the cheapest). Bounded means the peak
stays near the one-client figure however many clients there are: the server admits
one such batch at a time (`--max-request-bytes-in-flight`), reads a few at a time,
and lets the others wait in HTTP/2 flow control or refuses them.

The cost of that flow control is paid by a large request over a slow link: the last
table times one largest batch sent through a proxy adding 50 ms of round trip.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from bench import procs, report
from jobcontrol.server.app import MAX_MESSAGE_BYTES
from jobcontrol.store import StoreConfig
from jobcontrol.v1 import job_control_pb2 as api
from tests.sqld import DelayProxy

MIB = 1024 * 1024
CALL_TIMEOUT = 120.0
SLOW_LINK_RTT = 0.050
SLOW_LINK_CALLS = 3


def many_fields() -> bytes:
    payload = struct_pb2.Struct()
    payload.update({f"k{i}": i for i in range(50_000)})
    return _batch(api.SubmitJobRequest(type="memory.fields", payload=payload))


def one_string() -> bytes:
    payload = struct_pb2.Struct()
    payload.update({"b": "x" * (MIB - 64)})
    return _batch(api.SubmitJobRequest(type="memory.string", payload=payload))


def _batch(one: api.SubmitJobRequest) -> bytes:
    count = (MAX_MESSAGE_BYTES - 1024) // (one.ByteSize() + 8)
    return api.SubmitJobsRequest(requests=[one] * count).SerializeToString()


def burst(clients: int, body: bytes) -> tuple[int, int, Counter[str]]:
    """Start-up and peak RSS of a fresh server, and how the calls ended."""
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    go = threading.Barrier(clients)
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as directory:
        store = StoreConfig(path=str(Path(directory) / "jobs.db"))
        server = procs.Server.start(Path(directory) / "server.log", store)
        try:
            start = procs.peak_rss_bytes(server.pid)

            def client() -> None:
                with grpc.insecure_channel(server.address, options=options) as channel:
                    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                        "/jobcontrol.v1.JobControl/SubmitJobs"
                    )
                    go.wait()
                    try:
                        call(body, timeout=CALL_TIMEOUT)
                        code = "OK"
                    except grpc.RpcError as error:
                        code = error.code().name
                with lock:
                    codes[code] += 1

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return start, procs.peak_rss_bytes(server.pid), codes
        finally:
            server.stop()


def over_slow_link(body: bytes) -> list[float]:
    """Seconds each of a few calls takes through a proxy adding SLOW_LINK_RTT."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-") as directory:
        store = StoreConfig(path=str(Path(directory) / "jobs.db"))
        server = procs.Server.start(Path(directory) / "server.log", store)
        proxy = DelayProxy(server.address, rtt=SLOW_LINK_RTT).start()
        try:
            with grpc.insecure_channel(proxy.address, options=options) as channel:
                channel.unary_unary("/jobcontrol.v1.JobControl/ListWorkers")(b"", timeout=30)
                call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    "/jobcontrol.v1.JobControl/SubmitJobs"
                )
                seconds = []
                for _ in range(SLOW_LINK_CALLS):
                    started = time.perf_counter()
                    call(body, timeout=CALL_TIMEOUT)
                    seconds.append(time.perf_counter() - started)
                return seconds
        finally:
            proxy.stop()
            server.stop()


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("give client counts of at least 1, e.g. 1,50,100")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_memory", description=__doc__)
    parser.add_argument("--clients", type=_counts, default=[1, 50, 100])
    args = parser.parse_args(argv)
    shapes: dict[str, Callable[[], bytes]] = {
        "50,000-field payloads": many_fields,
        "1 MiB string payloads": one_string,
    }
    rows = []
    for shape, make in shapes.items():
        body = make()
        for clients in args.clients:
            start, peak, codes = burst(clients, body)
            ended = ", ".join(f"{n} {code}" for code, n in codes.most_common())
            rows.append(
                [
                    shape,
                    f"{len(body) / MIB:.1f}",
                    str(clients),
                    f"{start / MIB:.0f}",
                    f"{peak / MIB:.0f}",
                    ended,
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    seconds = sorted(over_slow_link(one_string()))
    print()
    print(
        report.table(
            "Server peak RSS, N clients each sending one largest SubmitJobs at once",
            ["batch", "MiB", "clients", "start MiB", "peak MiB", "calls ended"],
            rows,
            align="<>>>><",
        )
    )
    print()
    print(
        report.table(
            f"One largest SubmitJobs (1 MiB strings) through a proxy adding "
            f"{SLOW_LINK_RTT * 1000:.0f} ms of round trip, {SLOW_LINK_CALLS} calls",
            ["median s", "min s", "max s"],
            [[f"{seconds[len(seconds) // 2]:.2f}", f"{seconds[0]:.2f}", f"{seconds[-1]:.2f}"]],
            align=">>>",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
