"""A bare event loop timing its own timers, as a control for the servers' loop lag.

`python -m bench.loop_canary OUTPUT` runs an asyncio loop that does nothing but sleep
20 ms at a time (as `jobcontrol_event_loop_lag_seconds` is sampled in a server) and
writes one line per wake-up to OUTPUT: time.monotonic() at the wake-up and how late it
was, in seconds. It stops on SIGTERM or SIGINT. Beside a server, its lateness is what
the machine itself (CPU contention, scheduling) costs a Python event loop that holds
no work of its own: lag a server shows beyond it is the server's.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

INTERVAL = 0.02


async def sample(output: Path) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    lines: list[str] = []
    flushed = time.monotonic()
    with output.open("a") as out:
        while not stopping.is_set():
            due = time.monotonic() + INTERVAL
            await asyncio.sleep(INTERVAL)
            now = time.monotonic()
            lines.append(f"{now:.6f} {max(0.0, now - due):.6f}\n")
            if now - flushed >= 0.5:
                out.writelines(lines)
                out.flush()
                lines.clear()
                flushed = now
        out.writelines(lines)


def read(path: Path) -> list[tuple[float, float]]:
    """(monotonic time, lag in seconds) of every sample written so far."""
    if not path.exists():
        return []
    samples = []
    for line in path.read_text().splitlines():
        at, _, lag = line.partition(" ")
        if lag:
            samples.append((float(at), float(lag)))
    return samples


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.loop_canary OUTPUT", file=sys.stderr)
        return 64
    asyncio.run(sample(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
