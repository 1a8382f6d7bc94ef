"""`audio.transcode`: ffmpeg as a child process, with real progress.

Payload: {"input": path, "output": path, "codec"?: str, "bitrate"?: str}.
Result: {"output": path, "duration_s": float, "bytes": int}.

Paths are passed to ffmpeg as `file:` URLs, so a payload can name neither an option
(a path starting with '-') nor another protocol; nothing runs through a shell. The
output is written to a hidden partial file beside it and renamed at the end, so a
cancelled or failed job never leaves a half-written output behind; ffmpeg's errors are
passed on naming the output path as given, not that partial file.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import Any

from jobcontrol.worker.builtin.ffprobe import probe_duration
from jobcontrol.worker.child_process import run_child
from jobcontrol.worker.context import JobContext
from jobcontrol.worker.handlers import PermanentError, handler

CODEC = re.compile(r"[A-Za-z0-9_.-]{1,32}")
BITRATE = re.compile(r"[0-9]{1,6}[kKmM]?")


@handler("audio.transcode")
async def audio_transcode(ctx: JobContext) -> dict[str, Any]:
    source, target = _path(ctx.payload, "input"), _path(ctx.payload, "output")
    codec_args = _codec_args(ctx.payload)
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    if ffmpeg is None or ffprobe is None:
        raise PermanentError(
            "ffmpeg/ffprobe not found on PATH; install ffmpeg on the worker", code="ffmpeg_missing"
        )

    ctx.report_progress(0, stage="probing", message=str(source))
    duration = await _probe_duration(ffprobe, source, ctx)

    # Unique per attempt: two jobs (or attempts) writing one output never share a partial.
    # (Not job_id[:8]: job ids are UUIDv7, whose first 8 digits are the clock.)
    partial = target.with_name(f".{target.stem}.partial-{ctx.lease_id[:12]}{target.suffix}")
    try:
        ctx.report_progress(0, stage="transcoding", message=f"0.0s of {duration:.1f}s")
        result = await run_child(
            [
                ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-i", f"file:{source}", *codec_args,
                "-progress", "pipe:1", "-nostats", f"file:{partial}",
            ],
            ctx,
            on_stdout_line=_progress_parser(ctx, duration),
        )  # fmt: skip
        if result.returncode != 0:
            said = _as_given(result.stderr_tail, {partial: target, source: source})
            raise PermanentError(
                f"ffmpeg failed with exit code {result.returncode}: {said[-500:]}",
                code="ffmpeg_failed",
            )
        ctx.report_progress(99.5, stage="finalizing", message=str(target))
        partial.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return {"output": str(target), "duration_s": round(duration, 3), "bytes": target.stat().st_size}


def _as_given(text: str, paths: dict[Path, Path]) -> str:
    """ffmpeg's words with the paths the user gave: the output for the hidden partial
    file it was writing, and no `file:` prefixes."""
    for written, shown in paths.items():
        text = text.replace(f"file:{written}", str(shown)).replace(str(written), str(shown))
    return text


def _path(payload: Any, key: str) -> Path:
    value = payload.get(key)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PermanentError(f"payload.{key} must be a file path", code="bad_payload")
    return Path(value).expanduser().resolve()


def _codec_args(payload: Any) -> list[str]:
    args = []
    codec, bitrate = payload.get("codec"), payload.get("bitrate")
    if codec is not None:
        if not isinstance(codec, str) or not CODEC.fullmatch(codec):
            raise PermanentError(
                f"payload.codec is not a codec name: {codec!r}", code="bad_payload"
            )
        args += ["-c:a", codec]
    if bitrate is not None:
        if not isinstance(bitrate, str) or not BITRATE.fullmatch(bitrate):
            raise PermanentError(
                f"payload.bitrate must look like '128k', got {bitrate!r}", code="bad_payload"
            )
        args += ["-b:a", bitrate]
    return args


async def _probe_duration(ffprobe: str, source: Path, ctx: JobContext) -> float:
    probe, duration = await probe_duration(ffprobe, source, ctx)
    if probe.returncode != 0:
        said = _as_given(probe.stderr_tail, {source: source})
        raise PermanentError(f"cannot read input {source}: {said[-500:]}", code="bad_input")
    if duration is None:
        raise PermanentError(f"input {source} has no duration ffprobe can read", code="bad_input")
    if duration <= 0:
        raise PermanentError(f"input {source} is empty", code="bad_input")
    return duration


def _progress_parser(ctx: JobContext, duration: float) -> Any:
    """ffmpeg `-progress` prints key=value lines; out_time_us is how far it got."""

    def on_line(line: str) -> None:
        key, _, value = line.partition("=")
        if key == "out_time_us" and value.strip().isdigit():
            seconds = int(value) / 1_000_000
            percent = min(99.0, 100 * seconds / duration)
            ctx.report_progress(
                percent, stage="transcoding", message=f"{seconds:.1f}s of {duration:.1f}s"
            )

    return on_line
