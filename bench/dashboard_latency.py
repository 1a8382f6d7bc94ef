"""How long a worker's progress write takes to show in the dashboard, beside a dashboard
that polls every 2 s, with 100 dashboard tabs' worth of load on the server.

- the dashboard (streams): one real tab, headless Chromium (Debian's, driven by
  Playwright) on the server's own dashboard (`/#/jobs/<id>`, the job's page: a WatchJob
  stream, and the WatchJobs stream every tab holds), plus 99 tabs' worth of the same two
  Connect streams (WatchJobs on every job, WatchJob on the measured job) opened from this
  process over HTTP/1.1, read to the end and discarded.
- polling at 2 s: the same real tab's origin, running a page that calls GetJob (Connect,
  JSON) every POLL_PERIOD from a random phase and writes the job's progress message into
  the DOM, plus 99 tabs' worth of the same polling from this process.

The writer is `progress_latency`'s worker process: its own store on the server's SQLite
file, as a real worker has, writing UPDATES progress updates SPACING apart, each message
the time.time() just before the write. In the tab a MutationObserver records when the
shown message changes (performance.timeOrigin + performance.now(), the same clock), so a
latency is write -> DOM update. A skipped update (the stream coalesced it, or no poll
fell between it and the next) counts as shown when a newer one is (`covered`), which is
what a reader sees. Percentiles pool a run's updates; each figure is the median over
runs, each run on a fresh server and store.

Run: `.venv/bin/python -m bench.dashboard_latency [--runs N]` (needs /usr/bin/chromium,
`make system-deps`). Figures depend on the machine and its load; no figure is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import struct
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from playwright.async_api import Page, async_playwright

from bench import backends, procs, stats
from bench.progress_latency import Worker, covered
from jobcontrol.store import open_store
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc

CHROMIUM = "/usr/bin/chromium"
TABS = 100
UPDATES = 40
SPACING = 0.050  # seconds between progress writes: 20 a second, as in progress_latency
POLL_PERIOD = 2.0
JOB_TYPE = "bench.dashboard"
WAIT = 60.0
SERVICE = "/jobcontrol.v1.JobControl"
DASHBOARD = re.compile(r"dashboard at http://(\S+):(\d+)/")

# Installed in the tab once its view is up: records each change of the shown message.
OBSERVE = """() => {
  window.shown = [];
  let last = null;
  const record = () => {
    const node = document.getElementById("job-message");
    const text = node === null ? "" : node.textContent;
    if (text !== "" && text !== last) {
      last = text;
      window.shown.push([text, (performance.timeOrigin + performance.now()) / 1000]);
    }
  };
  new MutationObserver(record).observe(document.body, {
    subtree: true, childList: true, characterData: true,
  });
  record();
}"""

# The polling dashboard: the job's progress message from GetJob every period.
POLLING_PAGE = """([jobId, period]) => {
  document.body.replaceChildren();
  const node = document.createElement("p");
  node.id = "job-message";
  document.body.append(node);
  const poll = async () => {
    const response = await fetch("/jobcontrol.v1.JobControl/GetJob", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jobId }),
    });
    const { job } = await response.json();
    const message = job.progress?.message ?? "";
    if (message !== node.textContent) node.textContent = message;
  };
  setTimeout(() => { poll(); setInterval(poll, period * 1000); }, Math.random() * period * 1000);
}"""


# ---- the other 99 tabs ----------------------------------------------------------------


def _request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _stream(
    host: str, port: int, method: str, message: dict[str, object], answered: list[str]
) -> None:
    """One Connect server stream over its own HTTP/1.1 connection, read and discarded;
    `method` goes into `answered` when the first bytes come back."""
    data = json.dumps(message).encode()
    body = b"\0" + struct.pack(">I", len(data)) + data
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_request(host, port, f"{SERVICE}/{method}", body, "application/connect+json"))
        await writer.drain()
        if await reader.read(65536):
            answered.append(method)
            while await reader.read(65536):
                pass
    finally:
        writer.close()


async def _poller(host: str, port: int, job_id: str) -> None:
    """GetJob every POLL_PERIOD on a kept-alive connection, as a polling tab does."""
    body = json.dumps({"jobId": job_id}).encode()
    request = _request(host, port, f"{SERVICE}/GetJob", body, "application/json")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await asyncio.sleep(POLL_PERIOD * random.random())  # its own phase, as a tab's
        while True:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length is None:
                raise RuntimeError(f"GetJob answered without a length: {head!r}")
            await reader.readexactly(int(length.group(1)))
            await asyncio.sleep(POLL_PERIOD)  # the polling period itself, not a wait
    finally:
        writer.close()


# ---- one run --------------------------------------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"timed out after {WAIT} s waiting for the background streams")
        await asyncio.sleep(0.01)


async def _claimed_job(server: procs.Server, worker: Worker) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        await stub.SubmitJob(api.SubmitJobRequest(type=JOB_TYPE))
    [(job_id, lease_id)] = await worker.ask("claim", JOB_TYPE, 1)
    return job_id, lease_id


async def _measure(page: Page, worker: Worker, job_id: str, lease_id: str) -> list[float]:
    await page.evaluate(OBSERVE)
    sent: list[float] = await worker.ask("progress", job_id, lease_id, UPDATES, SPACING)
    last = f"{sent[-1]:.6f}"
    await page.wait_for_function(
        f"window.shown.some(([text]) => text === {json.dumps(last)})",
        timeout=WAIT * 1000,
    )
    shown: list[tuple[str, float]] = await page.evaluate("window.shown")
    index = {f"{at:.6f}": 100.0 * i / UPDATES for i, at in enumerate(sent, start=1)}
    arrivals = [(index[text], float(text), at) for text, at in shown if text in index]
    return covered(sent, arrivals)


async def one_run(directory: Path, run: int) -> dict[str, list[float]]:
    with backends.serve("sqlite", directory / f"run-{run}.db") as db:
        store = await open_store(db.config)  # create and migrate the database first
        await store.close()
        server = await asyncio.to_thread(
            procs.Server.start,
            directory / f"server-{run}.log",
            db.config,
            args=["--http-listen", "127.0.0.1:0"],
        )
        worker = Worker(db.config)
        background: list[asyncio.Task[None]] = []
        try:
            await worker.ask()  # "ready"
            found = DASHBOARD.search(server.log())
            assert found, server.log()
            host, port = found.group(1), int(found.group(2))
            base = f"http://{host}:{port}"
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM)
                try:
                    # Playwright waits by evaluating code, which the page's CSP forbids.
                    context = await browser.new_context(bypass_csp=True)
                    page = await context.new_page()

                    job_id, lease_id = await _claimed_job(server, worker)
                    answered: list[str] = []
                    for _ in range(TABS - 1):
                        background.append(
                            asyncio.create_task(_stream(host, port, "WatchJobs", {}, answered))
                        )
                        background.append(
                            asyncio.create_task(
                                _stream(host, port, "WatchJob", {"jobId": job_id}, answered)
                            )
                        )
                    # Every WatchJob starts with a snapshot: all of them are open.
                    await _until(lambda: answered.count("WatchJob") == TABS - 1)
                    await page.goto(f"{base}/#/jobs/{job_id}")
                    await page.wait_for_function(
                        "document.querySelector('main p[role=status]')?.textContent === 'Live'",
                        timeout=WAIT * 1000,
                    )
                    streamed = await _measure(page, worker, job_id, lease_id)
                    for task in background:
                        task.cancel()
                    await asyncio.gather(*background, return_exceptions=True)
                    background.clear()

                    job_id, lease_id = await _claimed_job(server, worker)
                    for _ in range(TABS - 1):
                        background.append(asyncio.create_task(_poller(host, port, job_id)))
                    await page.goto(f"{base}/app.css")  # the same origin, no dashboard
                    await page.evaluate(POLLING_PAGE, [job_id, POLL_PERIOD])
                    polled = await _measure(page, worker, job_id, lease_id)
                finally:
                    await browser.close()
            return {"streams": streamed, "polling": polled}
        finally:
            for task in background:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*background, return_exceptions=True)
            worker.close()
            await asyncio.to_thread(server.stop)


# ---- figures --------------------------------------------------------------------------

ROWS = {
    "streams": "dashboard (WatchJob stream)",
    "polling": f"polling GetJob every {POLL_PERIOD:g} s",
}


def render(figures: dict[str, dict[str, stats.Figure]], runs: int) -> str:
    lines = [
        f"Write -> DOM update, {UPDATES} updates {SPACING * 1000:.0f} ms apart, {TABS} tabs' "
        f"worth of load, median of {runs} run{'s' if runs != 1 else ''} (min-max), ms",
        "",
        "| dashboard | p50 | p99 | max |",
        "|---|---:|---:|---:|",
    ]
    for key, label in ROWS.items():
        row = figures[key]
        lines.append(
            f"| {label} | {row['p50'].cell()} | {row['p99'].cell()} | {row['max'].cell()} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_latency", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    figures = {key: {name: stats.Figure() for name in ("p50", "p99", "max")} for key in ROWS}
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as folder:
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs}", flush=True)
            samples = asyncio.run(one_run(Path(folder), run))
            for key, latencies in samples.items():
                found = stats.percentiles_ms(latencies)
                for name in ("p50", "p99", "max"):
                    figures[key][name].add(found[name])
    print(render(figures, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
