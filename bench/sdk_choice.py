"""Which Python SDK the remote libSQL store uses, by measurement on a real sqld.

A background thread runs `SELECT 1` in a loop through one SDK while the main thread
wakes every millisecond and records how late it woke: the time the rest of a server
process (every stream, every RPC) would have waited. Each SDK runs at 0 ms and at 20 ms
of added round trip (a delay proxy in front of sqld), in the same run.

- `libsql`: Turso's Rust-based SDK (remote mode), the driver before this one.
- `turso-serverless`: Turso's pure-Python driver, as shipped (a TCP connection per
  request, no timeout).
- `jobcontrol`: the store's driver (`jobcontrol.store.hrana`): turso-serverless on
  kept-alive connections, through `LibsqlJobStore.ping()` on an event loop.

Run: `.venv/bin/python -m bench.sdk_choice [--runs N] [--calls N]`.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import libsql
import turso_serverless

from bench import report
from bench.stats import percentile
from jobcontrol.store.libsql import LibsqlJobStore
from tests.sqld import ProxyProcess, SqldProcess

RTTS = (0.0, 0.020)
TICK = 0.001


def _libsql_loop(url: str) -> Callable[[int], None]:
    def run(calls: int) -> None:
        conn = libsql.connect(url, auth_token="")
        for _ in range(calls):
            conn.execute("SELECT 1").fetchall()
        conn.close()

    return run


def _serverless_loop(url: str) -> Callable[[int], None]:
    def run(calls: int) -> None:
        conn = turso_serverless.connect(url, isolation_level=None)
        for _ in range(calls):
            conn.execute("SELECT 1").fetchall()
        conn.close()

    return run


def _store_loop(url: str) -> Callable[[int], None]:
    async def pings(calls: int) -> None:
        store = await LibsqlJobStore.open(url)
        try:
            for _ in range(calls):
                await store.ping()
        finally:
            await store.close()

    return lambda calls: asyncio.run(pings(calls))


SDKS: dict[str, Callable[[str], Callable[[int], None]]] = {
    "libsql": _libsql_loop,
    "turso-serverless": _serverless_loop,
    "jobcontrol": _store_loop,
}


def measure(loop: Callable[[int], None], calls: int) -> tuple[list[float], float]:
    """The main thread's wake-up delays (ms) while `loop` runs, and seconds per call."""
    delays: list[float] = []
    started = time.perf_counter()
    worker = threading.Thread(target=loop, args=(calls,))
    worker.start()
    while worker.is_alive():
        due = time.perf_counter() + TICK
        time.sleep(TICK)
        delays.append((time.perf_counter() - due) * 1000)
    worker.join()
    return delays, (time.perf_counter() - started) / calls


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("sdk_choice", __doc__)
    parser.add_argument("--calls", type=int, default=100, help="SELECT 1 calls per SDK per run")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as directory, SqldProcess(Path(directory)) as sqld:
        for rtt in RTTS:
            # Its own process: the libsql SDK would hold the GIL from a proxy thread.
            log_path = Path(directory) / f"proxy-{rtt}.log"
            proxy = ProxyProcess(sqld.url, rtt, log_path=log_path).start()
            try:
                for name, make in SDKS.items():
                    measure(make(proxy.url), 5)  # connect and warm up
                    delays: list[float] = []
                    seconds = 0.0
                    for _ in range(args.runs):
                        some, per_call = measure(make(proxy.url), args.calls)
                        delays += some
                        seconds += per_call / args.runs
                    rows.append(
                        [
                            name,
                            f"{rtt * 1000:.0f}",
                            f"{seconds * 1000:.1f}",
                            f"{percentile(delays, 0.5):.2f}",
                            f"{percentile(delays, 0.99):.2f}",
                            f"{max(delays):.1f}",
                        ]
                    )
            finally:
                proxy.stop()
    print(
        report.table(
            "Main-thread wake-up delay while another thread queries sqld",
            ["SDK", "added RTT ms", "ms per call", "lag p50 ms", "lag p99 ms", "lag max ms"],
            rows,
            notes=[
                f"{args.runs} x {args.calls} SELECT 1 per SDK; the main thread sleeps "
                f"{TICK * 1000:.0f} ms at a time and records how late it wakes (its own "
                "timer overshoot included).",
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
