"""Cancel latency: CancelJob -> the handler sees it -> the job is CANCELLED, and for
`audio.transcode`, CancelJob -> ffmpeg gone.

Each run: a fresh store, `jobcontrol-server` and one `jobcontrol-worker
--handlers bench.cancel_handlers --concurrency 8` (default lease and cancel polling).
The clock starts just before each CancelJob call is sent:

- probe: `bench.cancel_probe` jobs (`cancel_handlers.py`: they wait like demo.sleep and
  write time.time() the moment the handler sees the stop), PROBE_ROUNDS rounds of 8 at
  once; once all 8 are RUNNING, each is cancelled at a random moment within the next
  second (so cancels fall at every phase of the worker's 200 ms cancel poll). Measured:
  the handler seeing it (its file), CANCELLED recorded (the job's end_time), and the
  CANCELLED event reaching a WatchJob stream opened on the job beforehand.
- demo.sleep {"seconds": 60, "steps": 0}: one round of 8 the same way, until WatchJob
  shows CANCELLED (the built-in handler writes no timestamp).
- audio.transcode: FFMPEG_SAMPLES jobs one at a time on a generated 20-minute FLAC
  (sine tone); once the worker's ffmpeg child exists, a random 50-250 ms later the job
  is cancelled, and /proc is polled every 2 ms until the ffmpeg process is gone (exited
  and reaped), then until WatchJob shows CANCELLED. Skipped if ffmpeg is missing.

Percentiles pool one run's samples; the table shows their median over runs (min-max).

Run: `.venv/bin/python -m bench.cancel_latency [--runs N]`.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import procs, report, rpc, streams
from bench.report import Headline
from bench.stats import Figures, percentiles_ms
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb

PROBE_ROUNDS = 3
BATCH = 8
FFMPEG_SAMPLES = 4
GOAL_P99_MS = 250.0
AUDIO_SECONDS = 1_200

KINDS = {
    "handler": "probe: CancelJob -> handler sees it",
    "recorded": "probe: CancelJob -> CANCELLED recorded (end_time)",
    "watched": "probe: CancelJob -> CANCELLED at a watcher",
    "demo_watched": "demo.sleep: CancelJob -> CANCELLED at a watcher",
    "ffmpeg_gone": "audio.transcode: CancelJob -> ffmpeg gone",
    "ffmpeg_watched": "audio.transcode: CancelJob -> CANCELLED at a watcher",
}


class Jobs:
    """Jobs with one WatchJob stream each: when each turned RUNNING and CANCELLED."""

    def __init__(self, stubs: Sequence[rpc.Stub], job_ids: Sequence[str]) -> None:
        self.job_ids = list(job_ids)
        self.running: dict[int, float] = {}
        self.cancelled: dict[int, float] = {}
        self.streams = streams.Streams(stubs, self.job_ids, self._on_event)

    def _on_event(self, index: int, event: pb.JobEvent, arrived: float) -> None:
        if event.job.state == pb.JOB_STATE_RUNNING:
            self.running.setdefault(index, arrived)
        elif event.job.state == pb.JOB_STATE_CANCELLED:
            self.cancelled.setdefault(index, arrived)

    async def __aenter__(self) -> Jobs:
        await self.streams.open(len(self.job_ids))
        await rpc.until(lambda: len(self.running) == len(self.job_ids), "jobs to start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.streams.close()

    async def all_cancelled(self) -> None:
        await rpc.until(lambda: len(self.cancelled) == len(self.job_ids), "CANCELLED")


async def cancel_round(
    stub: rpc.Stub,
    stubs: Sequence[rpc.Stub],
    requests: Sequence[api.SubmitJobRequest],
    *,
    canceller: rpc.Stub | None = None,
) -> tuple[list[str], list[float], list[float]]:
    """Submit, wait until all run, cancel each at a random moment within a second (through
    `canceller`, else `stub`); the job ids, when each cancel was sent and when its
    watcher saw CANCELLED."""
    canceller = canceller or stub
    job_ids = await rpc.submit(stub, requests)
    async with Jobs(stubs, job_ids) as jobs:
        began = time.time()
        offsets = sorted((random.uniform(0, 1), i) for i in range(len(job_ids)))
        sent = [0.0] * len(job_ids)
        for offset, index in offsets:
            await asyncio.sleep(max(0.0, began + offset - time.time()))
            sent[index] = time.time()
            await canceller.CancelJob(api.CancelJobRequest(job_id=job_ids[index]), timeout=rpc.WAIT)
        await jobs.all_cancelled()
        return job_ids, sent, [jobs.cancelled[i] - sent[i] for i in range(len(job_ids))]


def make_audio(directory: Path) -> Path:
    source = directory / "tone.flac"
    subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi"),
            *("-i", f"sine=frequency=440:sample_rate=44100:duration={AUDIO_SECONDS}"),
            *("-ac", "1", "-y", str(source)),
        ],
        check=True,
    )
    return source


def _ffmpeg_child(worker_pid: int) -> int | None:
    for pid in procs.children(worker_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if command.endswith(b"ffmpeg"):
            return pid
    return None


async def ffmpeg_sample(
    stub: rpc.Stub, worker: procs.Worker, source: Path, directory: Path, n: int
) -> tuple[float, float]:
    payload = {"input": str(source), "output": str(directory / f"out-{n}.mp3")}
    (job_id,) = await rpc.submit(stub, [rpc.request("audio.transcode", **payload)])
    async with Jobs([stub], [job_id]) as jobs:
        found: list[int | None] = [None]

        def started() -> bool:
            found[0] = _ffmpeg_child(worker.pid)
            return found[0] is not None

        await rpc.until(started, "ffmpeg to start")
        pid = found[0]
        assert pid is not None
        await asyncio.sleep(random.uniform(0.05, 0.25))
        sent = time.time()
        await stub.CancelJob(api.CancelJobRequest(job_id=job_id), timeout=rpc.WAIT)
        await rpc.until(lambda: not procs.alive(pid), "ffmpeg to exit", interval=0.002)
        gone = time.time()
        await jobs.all_cancelled()
        return gone - sent, jobs.cancelled[0] - sent


async def one_run(directory: Path, audio: Path | None) -> dict[str, list[float]]:
    seen_dir = directory / "seen"
    seen_dir.mkdir()
    found: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with procs.deployment("sqlite", directory) as (db, server, fleet):
        (worker,) = procs.workers(
            directory,
            db.config,
            1,
            concurrency=BATCH,
            handlers=["bench.cancel_handlers"],
            env={"BENCH_CANCEL_DIR": str(seen_dir)},
            into=fleet,
        )
        async with rpc.stubs(server.address) as stubs:
            stub = stubs[0]
            probe = [rpc.request("bench.cancel_probe", seconds=60) for _ in range(BATCH)]
            for _ in range(PROBE_ROUNDS):
                job_ids, sent, watched = await cancel_round(stub, stubs, probe)
                found["watched"] += watched
                for job_id, sent_at in zip(job_ids, sent, strict=True):
                    found["handler"].append(float((seen_dir / job_id).read_text()) - sent_at)
                ends = dict(
                    rpc.query(
                        directory / "sqlite.db",
                        "SELECT id, end_us FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                        [json.dumps(job_ids)],
                    )
                )
                found["recorded"] += [ends[j] / 1e6 - s for j, s in zip(job_ids, sent, strict=True)]
            demo = [rpc.request(seconds=60, steps=0) for _ in range(BATCH)]
            _, _, watched = await cancel_round(stub, stubs, demo)
            found["demo_watched"] += watched
            if audio is not None:
                for n in range(FFMPEG_SAMPLES):
                    gone, watched_at = await ffmpeg_sample(stub, worker, audio, directory, n)
                    found["ffmpeg_gone"].append(gone)
                    found["ffmpeg_watched"].append(watched_at)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.parser("cancel_latency", __doc__)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="jobcontrol-bench-audio-") as tmp:
        audio = make_audio(Path(tmp)) if shutil.which("ffmpeg") else None
        if audio is None:
            print("ffmpeg is not installed: the audio.transcode rows are skipped")
        for _, directory in report.run_directories(args.runs):
            found = rpc.run(one_run(directory, audio))
            for kind, values in found.items():
                if values:
                    figures.add_all(percentiles_ms(values), prefix=f"{kind}.")
            print(f" handler p99 {figures['handler.p99'].runs[-1]:.0f} ms", end="")
    elapsed = time.perf_counter() - began
    rows = [
        (
            description,
            f"{figures[f'{kind}.samples'].median:.0f}",
            figures[f"{kind}.p50"].cell(),
            figures[f"{kind}.p99"].cell(),
            f"{figures[f'{kind}.max'].median:.0f}",
        )
        for kind, description in KINDS.items()
        if f"{kind}.p50" in figures
    ]
    print(
        report.table(
            f"Cancel latency (ms), median of {args.runs} runs (min-max)",
            ("from CancelJob sent to", "samples/run", "p50", "p99", "max"),
            rows,
            notes=[
                f"{PROBE_ROUNDS} rounds of {BATCH} probe jobs and 1 of {BATCH} demo.sleep jobs "
                "per run, cancelled at random moments;",
                f"audio.transcode: {FFMPEG_SAMPLES} per run, a {AUDIO_SECONDS // 60}-minute FLAC "
                "to MP3; ffmpeg gone: exited and reaped.",
            ],
        )
    )
    handler = figures["handler.p99"]
    headlines = [
        Headline.of(
            "cancel latency",
            "p99 CancelJob -> handler sees it",
            "sqlite",
            handler,
            "ms",
            goal=f"<= {GOAL_P99_MS:.0f} ms",
            met=handler.median <= GOAL_P99_MS,
        ),
        Headline.of(
            "cancel latency", "p99 CancelJob -> CANCELLED at a watcher", "sqlite",
            figures["watched.p99"], "ms",
        ),
    ]  # fmt: skip
    if "ffmpeg_gone.p99" in figures:
        headlines.append(
            Headline.of(
                "cancel latency", "p99 CancelJob -> ffmpeg gone", "sqlite",
                figures["ffmpeg_gone.p99"], "ms",
            )
        )  # fmt: skip
    return report.finish(
        "cancel_latency",
        runs=args.runs,
        elapsed=elapsed,
        headlines=headlines,
        workload={
            "probe_rounds": PROBE_ROUNDS,
            "batch": BATCH,
            "ffmpeg_samples": FFMPEG_SAMPLES if audio else 0,
            "audio_seconds": AUDIO_SECONDS,
        },
        figures=figures.to_json(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
