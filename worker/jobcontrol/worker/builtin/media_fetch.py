"""`media.fetch`: download media from a URL with yt-dlp (as a library), with live
progress, prompt cancel and no server-side request forgery.

Payload: {"url": str, "output": path, "audio_only"?: bool, "format"?: str,
"max_bytes"?: int}. Result: {"output": path, "bytes": int, "duration_seconds"?: float,
"title"?: str, "content_type"?: str}.

Every connection yt-dlp makes goes through a `fetch_guard.ConnectionGuard` (a request
handler of our own is the only one it gets), so the URL, each redirect and each retry
are checked where the socket is connected, against the worker's `--fetch-allow`. Only
formats served over plain http(s) are downloaded: the others (HLS, DASH, RTMP) can hand
the download to ffmpeg or another program, which would connect past the guard.

yt-dlp runs in a thread. It writes into a hidden scratch folder beside the output,
which is renamed into place when complete and removed whatever happens, so a cancelled
or failed job leaves nothing behind. A stop shuts the open connections down, which
wakes a read blocked on a stalled server, and the progress hook raises at its next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import mimetypes
import shutil
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yt_dlp import YoutubeDL
from yt_dlp.networking._urllib import HTTPHandler, RedirectHandler, UrllibRH
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import (
    ContentTooShortError,
    DownloadCancelled,
    DownloadError,
    ExtractorError,
    PostProcessingError,
    UnsupportedError,
)

from jobcontrol.worker.builtin.ffprobe import probe_duration
from jobcontrol.worker.context import JobContext
from jobcontrol.worker.fetch_guard import ConnectionGuard, check_url
from jobcontrol.worker.handlers import PermanentError, RetryableError, handler

# The output's extension picks the codec yt-dlp's FFmpegExtractAudio converts to.
AUDIO_CODECS = {
    ".mp3": "mp3",
    ".m4a": "m4a",
    ".aac": "aac",
    ".opus": "opus",
    ".ogg": "vorbis",
    ".flac": "flac",
    ".wav": "wav",
}
CONTENT_TYPES = {".m4a": "audio/mp4", ".opus": "audio/ogg", ".flac": "audio/flac"}
# Formats downloaded over plain http(s) only (see the module docstring).
DIRECT = "[protocol^=http][protocol!*=dash]"
DIRECT_PROTOCOLS = frozenset({"http", "https"})
MAX_URL_LENGTH = 8192
MAX_FORMAT_LENGTH = 256
# yt-dlp's own retries resume a dropped download with a Range request; past them the
# attempt fails and the job's retries (with backoff) take over.
DOWNLOAD_RETRIES = 2
SOCKET_TIMEOUT_SECONDS = 30.0
PROGRESS_INTERVAL_SECONDS = 0.2
# After a stop, how long the handler waits for yt-dlp's thread to notice before it
# removes the scratch folder anyway: within the worker's grace for a stopped handler.
STOP_WAIT_SECONDS = 4.0
# Share of the bar the download takes when ffmpeg converts afterwards.
CONVERT_AT_PERCENT = 90.0


@dataclass(frozen=True, slots=True)
class FetchRequest:
    url: str
    target: Path
    audio_codec: str | None
    format: str | None  # as given; None: the best served over http(s)
    max_bytes: int | None

    @property
    def selector(self) -> str:
        if self.format is not None:
            return self.format
        if self.audio_codec is not None:
            return f"bestaudio{DIRECT}/best{DIRECT}"
        return f"bestvideo*{DIRECT}+bestaudio{DIRECT}/best{DIRECT}"


@handler("media.fetch")
async def media_fetch(ctx: JobContext) -> dict[str, Any]:
    request = _request(ctx.payload)
    if request.audio_codec is not None and shutil.which("ffmpeg") is None:
        raise PermanentError(
            "audio_only needs ffmpeg, which is not on PATH; install ffmpeg on the worker",
            code="ffmpeg_missing",
        )
    if not request.target.parent.is_dir():
        raise PermanentError(
            f"the output's folder {request.target.parent} does not exist", code="bad_output"
        )
    if request.target.is_dir():
        raise PermanentError(f"the output {request.target} is a folder", code="bad_output")
    # Unique per attempt, and beside the output so the final rename stays on one disk.
    scratch = request.target.with_name(f".{request.target.name}.fetch-{ctx.lease_id[:12]}")
    fetch = _Fetch(ctx, request, ConnectionGuard(ctx.fetch_allow), scratch)
    ctx.report_progress(0, stage="resolving", message=request.url)
    try:
        try:
            scratch.mkdir()
        except OSError as error:
            raise PermanentError(
                f"cannot write beside the output {request.target}: {error.strerror}",
                code="bad_output",
            ) from None
        downloading = asyncio.ensure_future(asyncio.to_thread(fetch.run))
        # After a stop nobody awaits it: its error (the stop itself) is not news.
        downloading.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            downloaded = await asyncio.shield(downloading)
        except asyncio.CancelledError:
            fetch.stop()
            await asyncio.wait({downloading}, timeout=STOP_WAIT_SECONDS)
            raise
        except (PermanentError, RetryableError):
            raise
        except Exception as error:
            ctx.raise_if_cancelled()  # the stop is the story, not what it broke
            raise _failure(error, fetch) from error
        ctx.report_progress(99.5, stage="finalizing", message=str(request.target))
        size = downloaded.stat().st_size
        duration = fetch.info.get("duration")
        if not isinstance(duration, int | float) or duration <= 0:
            duration = await _probe_duration(downloaded, ctx)
        downloaded.replace(request.target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, Any] = {"output": str(request.target), "bytes": size}
    if duration:
        result["duration_seconds"] = round(float(duration), 3)
    title = fetch.info.get("title")
    if isinstance(title, str) and title:
        result["title"] = title[:500]
    suffix = downloaded.suffix.lower()
    content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0]
    if content_type:
        result["content_type"] = content_type
    return result


def _request(payload: Mapping[str, Any]) -> FetchRequest:
    url = payload.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise PermanentError("payload.url must be a URL", code="bad_payload")
    try:
        check_url(url)
    except ValueError as error:
        raise PermanentError(f"payload.url: {error}", code="url_refused") from None
    output = payload.get("output")
    if not isinstance(output, str) or not output or "\x00" in output:
        raise PermanentError("payload.output must be a file path", code="bad_payload")
    target = Path(output).expanduser().resolve()
    audio_only = payload.get("audio_only", False)
    if not isinstance(audio_only, bool):
        raise PermanentError("payload.audio_only must be true or false", code="bad_payload")
    codec = None
    if audio_only:
        codec = AUDIO_CODECS.get(target.suffix.lower())
        if codec is None:
            raise PermanentError(
                "with audio_only, the output's extension picks the audio format: one of "
                f"{', '.join(AUDIO_CODECS)}, got {target.name!r}",
                code="bad_payload",
            )
    chosen = payload.get("format")
    if chosen is not None and (
        not isinstance(chosen, str) or not chosen.strip() or len(chosen) > MAX_FORMAT_LENGTH
    ):
        raise PermanentError(
            "payload.format must be a yt-dlp format selector such as 'bestaudio'",
            code="bad_payload",
        )
    max_bytes = payload.get("max_bytes")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise PermanentError(
            f"payload.max_bytes must be a positive whole number, got {max_bytes!r}",
            code="bad_payload",
        )
    return FetchRequest(url, target, codec, chosen, max_bytes)


class _Stopped(DownloadCancelled):  # type: ignore[misc]
    """Raised in yt-dlp's thread to end the download: yt-dlp passes these through."""


class _Fetch:
    """One download in yt-dlp's thread; `stop()` may be called from any thread."""

    def __init__(
        self, ctx: JobContext, request: FetchRequest, guard: ConnectionGuard, scratch: Path
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.guard = guard
        self.scratch = scratch
        self.info: Mapping[str, Any] = {}
        self.too_large: str | None = None
        self._last_report = 0.0

    def stop(self) -> None:
        self.guard.abort()

    def run(self) -> Path:
        with _GuardedYoutubeDL(self._params(), self.guard) as ydl:
            handlers = list(ydl._request_director.handlers.values())
            if [type(h) for h in handlers] != [_GuardedRH]:  # fail closed if yt-dlp changed
                raise PermanentError(
                    "this yt-dlp version bypasses the connection guard", code="fetch_unguarded"
                )
            info = ydl.extract_info(self.request.url, download=False)
            if info.get("_type") in ("playlist", "multi_video"):
                raise PermanentError(
                    "the URL is a playlist; media.fetch fetches one item",
                    code="playlist_not_supported",
                )
            self._check_formats(info)
            self._check_size(info)
            self.info = ydl.process_ie_result(info, download=True)
        return self._downloaded_file()

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "outtmpl": {"default": str(self.scratch / "media.%(ext)s")},
            "format": self.request.selector,
            "noplaylist": True,
            "extract_flat": "in_playlist",
            "quiet": True,
            "noprogress": True,
            "no_color": True,
            "logger": _YtDlpLog(self.ctx),
            "progress_hooks": [self._on_download],
            "postprocessor_hooks": [self._on_postprocess],
            "retries": DOWNLOAD_RETRIES,
            "fragment_retries": 0,
            "extractor_retries": 0,
            "socket_timeout": SOCKET_TIMEOUT_SECONDS,
            "proxy": "",
            "cachedir": False,
            "overwrites": True,
            "check_formats": False,
        }
        if self.request.audio_codec is not None:
            params["postprocessors"] = [
                {"key": "FFmpegExtractAudio", "preferredcodec": self.request.audio_codec}
            ]
        return params

    def _check_formats(self, info: Mapping[str, Any]) -> None:
        chosen = info.get("requested_formats") or [info]
        for fmt in chosen:
            protocol = fmt.get("protocol") or "https"
            if protocol not in DIRECT_PROTOCOLS:
                raise PermanentError(
                    f"the chosen format is delivered over {protocol}; media.fetch downloads "
                    "formats served over http(s) only (choose another with payload.format)",
                    code="unsupported_protocol",
                )

    def _check_size(self, info: Mapping[str, Any]) -> None:
        limit = self.request.max_bytes
        chosen = info.get("requested_formats") or [info]
        sizes = [fmt.get("filesize") or fmt.get("filesize_approx") for fmt in chosen]
        known = [s for s in sizes if isinstance(s, int | float)]
        if limit is not None and known and sum(known) > limit:
            raise PermanentError(
                f"the media is {_size(sum(known))}, over max_bytes ({limit} bytes)",
                code="too_large",
            )

    def _refuse_size(self, said: str) -> None:
        """From the progress hook: yt-dlp passes `_Stopped` through, and `_failure` turns
        it into the job's error."""
        self.too_large = said
        raise _Stopped(said)

    def _on_download(self, status: dict[str, Any]) -> None:
        if self.ctx.cancelled or self.guard.aborted:
            raise _Stopped("the job was stopped")
        done = int(status.get("downloaded_bytes") or 0)
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        limit = self.request.max_bytes
        if limit is not None and isinstance(total, int | float) and total > limit:
            self._refuse_size(
                f"the server announced {_size(total)}, over max_bytes ({limit} bytes)"
            )
        if limit is not None and done > limit:
            self._refuse_size(f"the download went past max_bytes ({limit} bytes)")
        now = time.monotonic()
        finished = status.get("status") == "finished"
        if not finished and now - self._last_report < PROGRESS_INTERVAL_SECONDS:
            return
        self._last_report = now
        share = CONVERT_AT_PERCENT if self.request.audio_codec else 99.0
        percent = share * done / total if isinstance(total, int | float) and total > 0 else 0.0
        if finished:
            percent = share
        self.ctx.report_progress(
            min(percent, share), stage="downloading", message=_download_message(status, total)
        )

    def _on_postprocess(self, status: dict[str, Any]) -> None:
        if self.ctx.cancelled or self.guard.aborted:
            raise _Stopped("the job was stopped")
        if status.get("status") == "started" and status.get("postprocessor") == "ExtractAudio":
            self.ctx.report_progress(
                CONVERT_AT_PERCENT,
                stage="converting",
                message=f"extracting the audio as {self.request.audio_codec}",
            )

    def _downloaded_file(self) -> Path:
        downloads = self.info.get("requested_downloads") or []
        for download in downloads:
            path = download.get("filepath")
            if isinstance(path, str) and Path(path).is_file():
                return Path(path)
        found = [p for p in self.scratch.iterdir() if p.is_file()]
        if len(found) != 1:
            raise RetryableError(
                f"yt-dlp left {len(found)} files instead of one", code="download_failed"
            )
        return found[0]


class _GuardedRH(UrllibRH):  # type: ignore[misc]
    """yt-dlp's urllib request handler with every connection made by the guard, no
    proxy (a proxy would connect on our behalf, unchecked) and http(s) only."""

    RH_NAME = "jobcontrol-guarded"
    _SUPPORTED_URL_SCHEMES = ("http", "https")
    _SUPPORTED_PROXY_SCHEMES = ()

    def __init__(self, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        kwargs.pop("enable_file_urls", None)
        super().__init__(**kwargs)
        self._guard = guard

    def _get_proxies(self, request: Any) -> dict[str, str]:
        return {}

    def _create_instance(
        self, proxies: Any, cookiejar: Any, legacy_ssl_support: Any = None
    ) -> urllib.request.OpenerDirector:
        opener = urllib.request.OpenerDirector()
        for each in (
            _GuardedHTTPHandler(
                self._guard,
                debuglevel=int(bool(self.verbose)),
                context=self._make_sslcontext(legacy_ssl_support=legacy_ssl_support),
            ),
            urllib.request.HTTPCookieProcessor(cookiejar),
            urllib.request.UnknownHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
            RedirectHandler(),
        ):
            opener.add_handler(each)
        opener.addheaders = []
        return opener


class _GuardedHTTPHandler(HTTPHandler):  # type: ignore[misc]
    def __init__(self, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    def http_open(self, req: Any) -> Any:
        return self.do_open(self._connection(http.client.HTTPConnection), req)

    def https_open(self, req: Any) -> Any:
        return self.do_open(
            self._connection(http.client.HTTPSConnection), req, context=self._context
        )

    def _connection(self, base: type[http.client.HTTPConnection]) -> Any:
        def connection(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            made = base(*args, **kwargs)
            made._create_connection = self._guard.connect  # type: ignore[attr-defined]
            return made

        return connection


class _GuardedYoutubeDL(YoutubeDL):  # type: ignore[misc]
    """YoutubeDL whose only request handler is `_GuardedRH`."""

    def __init__(self, params: dict[str, Any], guard: ConnectionGuard) -> None:
        self._guard = guard
        super().__init__(params)

    @functools.cached_property
    def _request_director(self) -> Any:
        return self.build_request_director([functools.partial(_GuardedRH, guard=self._guard)])


class _YtDlpLog:
    """yt-dlp's messages go to the job's logger; its errors come back as exceptions."""

    def __init__(self, ctx: JobContext) -> None:
        self._logger = ctx.logger

    def debug(self, message: str) -> None:
        self._logger.debug("yt-dlp: %s", message)

    def info(self, message: str) -> None:
        self._logger.debug("yt-dlp: %s", message)

    def warning(self, message: str) -> None:
        self._logger.warning("yt-dlp: %s", message)

    def error(self, message: str) -> None:
        self._logger.debug("yt-dlp: %s", message)


def _failure(error: Exception, fetch: _Fetch) -> Exception:
    """The job's error for what yt-dlp raised: permanent when trying again cannot help."""
    if fetch.guard.refused is not None:
        return PermanentError(str(fetch.guard.refused), code="url_refused")
    if fetch.too_large is not None:
        return PermanentError(fetch.too_large, code="too_large")
    if fetch.guard.host_not_found is not None:
        return PermanentError(str(fetch.guard.host_not_found), code="host_not_found")
    causes = list(_causes(error))
    said = _said(error)
    for cause in causes:
        if isinstance(cause, HTTPError):
            status = cause.status
            text = f"the server answered HTTP {status} {cause.reason or ''}".strip()
            if status in (404, 410):
                return PermanentError(text, code="not_found")
            if status in (408, 425, 429):
                return RetryableError(text, code="rate_limited")
            if status >= 500:
                return RetryableError(text, code="server_error")
            return PermanentError(text, code="http_error")
        if isinstance(cause, UnsupportedError):
            return PermanentError(said, code="unsupported_url")
        if isinstance(cause, PostProcessingError):
            return PermanentError(said, code="postprocessing_failed")
        if isinstance(cause, ExtractorError) and "Requested format is not available" in said:
            if fetch.request.format is None:
                return PermanentError(
                    "no format of this media is served over plain http(s), the only kind "
                    "media.fetch downloads",
                    code="unsupported_protocol",
                )
            return PermanentError(
                f"no format matches payload.format {fetch.request.format!r} among those "
                "served over plain http(s)",
                code="format_unavailable",
            )
    for cause in causes:
        if isinstance(cause, TransportError | ContentTooShortError | OSError):
            return RetryableError(said, code="connection_error")
    for cause in causes:
        if isinstance(cause, ExtractorError) and cause.expected:
            return PermanentError(said, code="media_unavailable")
    if "Giving up after" in said or "Did not get any data" in said:
        return RetryableError(said, code="connection_error")
    return RetryableError(said, code="download_failed")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception it was caused by, however yt-dlp chained them."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        nested = [
            getattr(current, "cause", None),
            getattr(current, "reason", None),
            exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None,
            current.__cause__,
            current.__context__,
        ]
        pending += [n for n in nested if isinstance(n, BaseException)]


def _said(error: BaseException) -> str:
    text = str(getattr(error, "msg", None) or error) if isinstance(error, DownloadError) else ""
    text = text or str(error) or type(error).__name__
    return text.removeprefix("ERROR: ").strip()[-1000:]


async def _probe_duration(path: Path, ctx: JobContext) -> float | None:
    """ffprobe's duration for the file, if ffprobe is there and can tell."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    with contextlib.suppress(OSError):
        probe, seconds = await probe_duration(ffprobe, path, ctx)
        if probe.returncode == 0 and seconds is not None and seconds > 0:
            return seconds
    return None


def _download_message(status: Mapping[str, Any], total: Any) -> str:
    """`7.0 KiB of 39.6 KiB at 22.8 KiB/s, ETA 2s`, or `7.0 KiB at 22.8 KiB/s` when the
    size is unknown."""
    done = int(status.get("downloaded_bytes") or 0)
    said = f"{_size(done)} of {_size(total)}" if isinstance(total, int | float) else _size(done)
    speed = status.get("speed")
    if isinstance(speed, int | float) and speed > 0:
        said += f" at {_size(speed)}/s"
    eta = status.get("eta")
    if isinstance(eta, int | float) and status.get("status") != "finished":
        said += f", ETA {_duration(eta)}"
    return said


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
