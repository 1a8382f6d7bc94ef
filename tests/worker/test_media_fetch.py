"""`media.fetch` through real `jobcontrol-server` and `jobcontrol-worker` processes,
against the loopback server of tests/media_server.py: no internet involved. Workers that
must reach it are started with `--fetch-allow 127.0.0.1`; the refusals run without it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from jobcontrol.jobs import EventKind, Job, JobState
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb
from jobcontrol.worker import PermanentError
from jobcontrol.worker.fetch_guard import FetchAllowList
from jobcontrol.worker.testing import HandlerTestEnvironment
from tests.conftest import BIN, ServerProcess, start_server, wait_until
from tests.media_server import MediaServer
from tests.worker.conftest import StartWorker, SyncStore, WorkerProcess
from tests.worker.test_worker_processes import (
    FAST_LEASE,
    HEARTBEAT,
    TERMINAL,
    Stub,
    cancel_and_time,
    events_of,
    kinds,
    submit_with,
    wait_state,
)

ALLOW_LOOPBACK = ("--fetch-allow", "127.0.0.1")
TONE_SECONDS = 5


def ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        check=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few seconds of sine as MP3, and a short video with sound (for audio_only)."""
    folder = tmp_path_factory.mktemp("media")
    tone, clip = folder / "tone.mp3", folder / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={TONE_SECONDS}", "-b:a", "64k",
           str(tone))  # fmt: skip
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=2",
        "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
        "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(clip),
    )  # fmt: skip
    return {"tone.mp3": tone, "clip.mp4": clip}


@pytest.fixture
def media(media_files: dict[str, Path]) -> Iterator[MediaServer]:
    server = MediaServer(media_files).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[Stub]:
    with server.channel() as channel:
        yield Stub(channel)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def fetch(stub: Stub, url: str, output: Path, max_attempts: int = 1, **payload: Any) -> str:
    return submit_with(
        stub,
        "media.fetch",
        {"url": url, "output": str(output), **payload},
        max_attempts=max_attempts,
    )


def watch(stub: Stub, job_id: str) -> list[pb.JobEvent]:
    stream = stub.WatchJob(api.WatchJobRequest(job_id=job_id), timeout=60)
    return [message.event for message in stream]


def failed(store: SyncStore, job_id: str, timeout: float = 30) -> Job:
    job = wait_state(store, job_id, *TERMINAL, timeout=timeout)
    assert job.state is JobState.FAILED, job
    assert job.error is not None
    return job


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- fetching ----------------------------------------------------------------------


def test_fetch_shows_rising_progress_and_writes_the_file_with_its_details(
    server: ServerProcess,
    stub: Stub,
    start_worker: StartWorker,
    media: MediaServer,
    media_files: dict[str, Path],
    out: Path,
):
    source = media_files["tone.mp3"]
    rate = source.stat().st_size // 5  # about five seconds: yt-dlp reads about a second a time
    job_id = fetch(stub, media.url(f"slow/{rate}/tone.mp3"), out / "tone.mp3")
    stream = stub.WatchJob(api.WatchJobRequest(job_id=job_id), timeout=60)
    first = next(stream).event
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    events = [first, *(message.event for message in stream)]

    final = events[-1].job
    assert final.state == pb.JOB_STATE_SUCCEEDED, final
    downloading = [
        e.job.progress
        for e in events
        if e.kind == pb.EVENT_KIND_PROGRESS and e.job.progress.stage == "downloading"
    ]
    assert len(downloading) >= 3, f"too few progress updates while downloading: {downloading}"
    percents = [p.percent for p in downloading]
    assert percents == sorted(percents), f"progress went backwards: {percents}"
    assert 0 < percents[0] < percents[-1], percents
    assert any(" of " in p.message and "/s" in p.message for p in downloading), downloading
    assert final.progress.percent == 100
    result = json_format.MessageToDict(final.result)
    assert result["output"] == str((out / "tone.mp3").resolve())
    assert result["bytes"] == source.stat().st_size
    assert result["duration_seconds"] == pytest.approx(TONE_SECONDS, abs=0.2)
    assert result["title"] == "tone"
    assert result["content_type"] == "audio/mpeg"
    assert (out / "tone.mp3").read_bytes() == source.read_bytes()
    assert leftovers(out) == ["tone.mp3"], "no scratch files may remain"


def test_audio_only_extracts_the_audio_with_ffmpeg(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path,
):  # fmt: skip
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    job_id = fetch(stub, media.url("clip.mp4"), out / "clip.mp3", audio_only=True)
    job = wait_state(store, job_id, *TERMINAL, timeout=60)

    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None
    assert job.result["content_type"] == "audio/mpeg"
    streams = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name",
         "-of", "json", str(out / "clip.mp3")],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    found = [(s["codec_type"], s["codec_name"]) for s in json.loads(streams.stdout)["streams"]]
    assert found == [("audio", "mp3")]
    assert leftovers(out) == ["clip.mp3"]


def test_cancel_mid_download_stops_it_and_leaves_no_file(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, media_files: dict[str, Path], out: Path,
):  # fmt: skip
    rate = media_files["tone.mp3"].stat().st_size // 60  # a minute: still going when cancelled
    worker = start_worker(server.store_path, *ALLOW_LOOPBACK, *FAST_LEASE)
    job_id = fetch(stub, media.url(f"slow/{rate}/tone.mp3"), out / "tone.mp3")

    def downloading() -> Job | None:
        job: Job = store.get_job(job_id)
        started = job.progress.stage == "downloading" and job.progress.percent > 0
        return job if started else None

    wait_until(downloading, timeout=30, interval=0.05, what="the download to start")
    assert [p.name.split(".fetch-")[0] for p in out.iterdir()] == [".tone.mp3"], (
        "the download goes to a scratch folder beside the output"
    )

    latency = cancel_and_time(store, stub, job_id, deadline=2 * HEARTBEAT)
    print(f"\nmedia.fetch cancel latency: {latency * 1000:.0f} ms")

    assert leftovers(out) == [], "neither the partial download nor the output may remain"
    assert kinds(events_of(store, job_id))[-1] is EventKind.CANCELLED
    assert worker.process.poll() is None


def test_progress_without_a_known_size_counts_bytes(
    server: ServerProcess, stub: Stub, start_worker: StartWorker, media: MediaServer,
    media_files: dict[str, Path], out: Path,
):  # fmt: skip
    rate = media_files["tone.mp3"].stat().st_size // 5
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    job_id = fetch(stub, media.url(f"slow/{rate}/unsized/tone.mp3"), out / "tone.mp3")
    events = watch(stub, job_id)

    assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED, events[-1].job
    counting = [
        e.job.progress
        for e in events
        if e.job.progress.stage == "downloading" and " of " not in e.job.progress.message
    ]
    assert len(counting) >= 2, [e.job.progress for e in events]
    assert all(p.percent == 0 for p in counting), counting
    assert all(re.fullmatch(r"[0-9.]+ KiB at [0-9.]+ KiB/s", p.message) for p in counting[1:]), (
        counting
    )


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("tone.mp3", "the server announced 39.6 KiB, over max_bytes (4096 bytes)"),
        ("unsized/tone.mp3", "the download went past max_bytes (4096 bytes)"),
    ],
)
def test_over_max_bytes_fails_permanently_and_leaves_no_file(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path, path: str, said: str,
):  # fmt: skip
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    job_id = fetch(stub, media.url(path), out / "tone.mp3", max_attempts=3, max_bytes=4096)
    job = failed(store, job_id)

    assert job.error is not None
    assert job.error.code == "too_large"
    assert job.error.retryable is False
    assert job.error.message == said
    assert job.attempt == 1
    assert leftovers(out) == []


# ---- errors and retries --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra", "code"),
    [
        ("status/404/tone.mp3", {}, "not_found"),
        ("page.html", {}, "unsupported_url"),
        # HLS could be handed to ffmpeg, which would connect past the guard.
        ("hls.m3u8", {}, "unsupported_protocol"),
        ("hls.m3u8", {"format": "best"}, "unsupported_protocol"),
    ],
)
def test_missing_or_unsupported_media_fails_at_once(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path, path: str, extra: dict[str, str], code: str,
):  # fmt: skip
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    job_id = fetch(stub, media.url(path), out / "tone.mp3", max_attempts=3, **extra)
    job = failed(store, job_id)

    assert job.error is not None
    assert (job.error.code, job.error.retryable, job.attempt) == (code, False, 1)
    assert leftovers(out) == []
    assert not any(r.endswith("/tone.mp3") for r in media.requests if r != f"/{path}"), (
        "nothing was downloaded"
    )


@pytest.mark.parametrize(
    ("path", "code"),
    [("status/500/tone.mp3", "server_error"), ("drop/tone.mp3", "connection_error")],
)
def test_server_errors_and_dropped_connections_are_retried(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path, path: str, code: str,
):  # fmt: skip
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    job_id = fetch(stub, media.url(path), out / "tone.mp3", max_attempts=2)
    job = failed(store, job_id, timeout=60)

    assert job.error is not None
    assert (job.error.code, job.error.retryable, job.attempt) == (code, True, 2)
    assert kinds(events_of(store, job_id)).count(EventKind.RETRY_SCHEDULED) == 1
    assert media.count(f"/{path}") >= 2, "each attempt asked the server again"
    assert leftovers(out) == []


# ---- server-side request forgery ---------------------------------------------------


def test_urls_reaching_the_workers_own_network_are_refused_without_connecting(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path,
):  # fmt: skip
    port = media.port
    refused = {
        f"http://127.0.0.1:{port}/tone.mp3": "loopback",
        f"http://localhost:{port}/tone.mp3": "loopback",
        f"http://[::1]:{port}/tone.mp3": "loopback",
        f"http://[::ffff:127.0.0.1]:{port}/tone.mp3": "loopback",
        f"http://0.0.0.0:{port}/tone.mp3": "unspecified",
        "http://10.1.2.3/tone.mp3": "private",
        "http://192.168.0.1/tone.mp3": "private",
        "http://169.254.169.254/latest/meta-data/": "cloud metadata",
        "http://[fd00:ec2::254]/latest/meta-data/": "cloud metadata",
        "file:///etc/passwd": "only http and https",
        f"ftp://127.0.0.1:{port}/tone.mp3": "only http and https",
    }
    start_worker(server.store_path)
    jobs = {url: fetch(stub, url, out / "x.mp3", max_attempts=3) for url in refused}

    for url, said in refused.items():
        job = failed(store, jobs[url])
        assert job.error is not None
        assert (job.error.code, job.error.retryable, job.attempt) == ("url_refused", False, 1), url
        assert said in job.error.message, (url, job.error.message)
    assert media.requests == [], "a refused URL is refused before connecting"
    assert leftovers(out) == []


def test_a_redirect_from_an_allowed_host_to_a_private_one_is_refused(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path,
):  # fmt: skip
    start_worker(server.store_path, *ALLOW_LOOPBACK)
    to_private = fetch(stub, media.url("redirect?to=http://10.1.2.3/tone.mp3"), out / "a.mp3")
    to_metadata = fetch(
        stub, media.url("redirect?to=http://169.254.169.254/latest/"), out / "b.mp3"
    )
    to_allowed = fetch(stub, media.url(f"redirect?to={media.url('tone.mp3')}"), out / "c.mp3")

    for job_id, said in ((to_private, "10.1.2.3: a private"), (to_metadata, "cloud metadata")):
        job = failed(store, job_id)
        assert job.error is not None
        assert job.error.code == "url_refused"
        assert said in job.error.message
    assert wait_state(store, to_allowed, *TERMINAL).state is JobState.SUCCEEDED
    assert media.count("/redirect") == 3
    assert leftovers(out) == ["c.mp3"]


def test_fetch_allow_from_the_environment_allows_a_host_by_name_not_its_address(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path,
):  # fmt: skip
    worker = start_worker(
        server.store_path, env={"JOBCONTROL_FETCH_ALLOW": "192.0.2.0/24, localhost"}
    )
    by_name = fetch(stub, media.url("tone.mp3", host="localhost"), out / "a.mp3")
    by_address = fetch(stub, media.url("tone.mp3"), out / "b.mp3")

    assert wait_state(store, by_name, *TERMINAL).state is JobState.SUCCEEDED
    job = failed(store, by_address)
    assert job.error is not None
    assert job.error.code == "url_refused"
    assert leftovers(out) == ["a.mp3"]
    assert "URLs in jobs may also reach localhost, 192.0.2.0/24" in worker.log


def test_fetch_allow_takes_a_cidr_network(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker,
    media: MediaServer, out: Path,
):  # fmt: skip
    start_worker(server.store_path, "--fetch-allow", "127.0.0.0/8")
    job_id = fetch(stub, media.url("tone.mp3"), out / "a.mp3")

    assert wait_state(store, job_id, *TERMINAL).state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--fetch-allow", "not a host!"], {}, "argument --fetch-allow: 'not a host!' is neither"),
        ([], {"JOBCONTROL_FETCH_ALLOW": "10.0.0.0/8,x/y"}, "env JOBCONTROL_FETCH_ALLOW: 'x/y'"),
    ],
)
def test_a_bad_fetch_allow_is_one_line_of_error(
    tmp_path: Path, args: list[str], env: dict[str, str], said: str
):
    result = subprocess.run(
        [str(BIN / "jobcontrol-worker"), "--store-path", str(tmp_path / "jobs.db"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"jobcontrol-worker: {said}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_handler_test_environment_takes_a_fetch_allow_list(
    media: MediaServer, media_files: dict[str, Path], out: Path
):
    payload = {"url": media.url("tone.mp3"), "output": str(out / "tone.mp3")}
    allowed = HandlerTestEnvironment(fetch_allow=FetchAllowList.parse(["127.0.0.1"]))

    assert allowed.run("media.fetch", payload)["bytes"] == media_files["tone.mp3"].stat().st_size
    with pytest.raises(PermanentError, match=r"127\.0\.0\.1: a loopback address") as refused:
        HandlerTestEnvironment().run("media.fetch", payload)
    assert refused.value.code == "url_refused"


# ---- jobctl --------------------------------------------------------------------------


def test_jobctl_submit_watch_shows_the_fetch_to_succeeded(
    server: ServerProcess, start_worker: StartWorker, media: MediaServer,
    media_files: dict[str, Path], out: Path,
):  # fmt: skip
    # A relative output is the worker's: relative to its working folder.
    worker: WorkerProcess = start_worker(server.store_path, *ALLOW_LOOPBACK, cwd=out)
    rate = media_files["clip.mp4"].stat().st_size // 2
    payload = {"url": media.url(f"slow/{rate}/clip.mp4"), "output": "a.mp3", "audio_only": True}
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "jobctl"), "submit", "media.fetch", "--payload", json.dumps(payload),
         "--watch", "--addr", server.address],
        capture_output=True, text=True, timeout=120, cwd=out, check=False,
    )  # fmt: skip

    assert result.returncode == 0, (result, worker.log)
    assert "downloading" in result.stdout, result.stdout
    assert "SUCCEEDED" in result.stdout, result.stdout
    assert leftovers(out) == ["a.mp3"]
    print(f"\njobctl submit media.fetch --watch: {time.monotonic() - started:.1f}s")
    print(result.stdout)


def test_the_servers_in_process_worker_takes_a_fetch_allow_list_too(
    tmp_path: Path, media: MediaServer, media_files: dict[str, Path], out: Path
):
    """`make run` (`--with-worker`) serves media.fetch as a standalone worker does:
    loopback is refused until `--worker-fetch-allow` allows it."""
    outcomes = {}
    for name, allow in (("refused", []), ("allowed", ["--worker-fetch-allow", "127.0.0.1"])):
        folder = tmp_path / name
        folder.mkdir()
        server = start_server(folder, args=["--with-worker", *allow])
        try:
            with server.channel() as channel:
                stub = Stub(channel)
                job_id = fetch(stub, media.url("tone.mp3"), out / f"{name}.mp3")
                outcomes[name] = watch(stub, job_id)[-1].job
        finally:
            server.stop()
        if name == "refused":
            assert media.count("/tone.mp3") == 0, "a refused URL was connected to"

    assert outcomes["refused"].state == pb.JOB_STATE_FAILED, outcomes["refused"]
    assert outcomes["refused"].error.code == "url_refused"
    assert outcomes["allowed"].state == pb.JOB_STATE_SUCCEEDED, outcomes["allowed"]
    assert (out / "allowed.mp3").read_bytes() == media_files["tone.mp3"].read_bytes()
