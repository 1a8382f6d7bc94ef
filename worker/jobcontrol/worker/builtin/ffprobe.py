"""ffprobe's reading of a media file's duration, one command line for the built-in
handlers that need it (`audio.transcode` refuses an input without one, `media.fetch`
reports it when the site did not)."""

from __future__ import annotations

from pathlib import Path

from jobcontrol.worker.child_process import ChildResult, run_child
from jobcontrol.worker.context import JobContext


async def probe_duration(
    ffprobe: str, path: Path, ctx: JobContext
) -> tuple[ChildResult, float | None]:
    """ffprobe's exit and error output, and the duration in seconds it printed (None
    when it printed none it could read). The path goes as a `file:` URL, so it can name
    neither an option nor another protocol."""
    lines: list[str] = []
    probe = await run_child(
        [
            ffprobe, "-v", "error", "-show_entries", "format=duration",
            "-of", "default=noprint_wrappers=1:nokey=1", f"file:{path}",
        ],
        ctx,
        on_stdout_line=lines.append,
    )  # fmt: skip
    try:
        return probe, float(lines[0])
    except (IndexError, ValueError):
        return probe, None
