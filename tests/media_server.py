"""A loopback HTTP server for `media.fetch` tests: real media made by ffmpeg, served
fast, throttled, broken or redirected, with no internet involved.

Paths (NAME is a file given to `MediaServer`, e.g. "tone.mp3"):

- `/NAME`: the file, with its Content-Type and Content-Length.
- `/slow/BYTES_PER_SECOND/NAME`: the same, sent in small pieces at that rate.
- `/drop/NAME`: announces the whole file, sends half and closes the connection.
- `/unsized/NAME`: the file with no Content-Length; its end is the connection's.
- `/slow/BYTES_PER_SECOND/unsized/NAME`: throttled and with no Content-Length.
- `/status/CODE/NAME`: answers CODE (404, 500, ...) with a short body.
- `/redirect?to=URL`: a 302 to URL.
- `/page.html`: a web page with no media in it.
- `/hls.m3u8`: an HLS playlist of one segment, tone.mp3 (a format that is not plain http).

`requests` lists the paths asked for, in order, for tests that count attempts.
"""

from __future__ import annotations

import contextlib
import mimetypes
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PIECE_BYTES = 1024


class MediaServer:
    def __init__(self, files: dict[str, Path]) -> None:
        self.files = dict(files)
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="media-server")

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    def start(self) -> MediaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(10)

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.count(path)


def _handler_class(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet tests
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            url = urllib.parse.urlsplit(self.path)
            server.record(url.path)
            parts = url.path.strip("/").split("/")
            # A client that stops reading (yt-dlp probes the first bytes, a cancelled
            # download) is no error of the server's.
            with contextlib.suppress(ConnectionError):
                if parts == ["page.html"]:
                    self._page()
                elif parts == ["hls.m3u8"]:
                    self._playlist()
                elif parts == ["redirect"]:
                    target = urllib.parse.parse_qs(url.query).get("to", [""])[0]
                    self._status(302, {"Location": target})
                elif len(parts) == 3 and parts[0] == "status":
                    self._status(int(parts[1]))
                elif len(parts) >= 3 and parts[0] == "slow":
                    self._file(parts[-1], body=body, rate=float(parts[1]), sized=parts[2:-1] == [])
                elif len(parts) == 2 and parts[0] == "drop":
                    self._file(parts[1], body=body, drop=True)
                elif len(parts) == 2 and parts[0] == "unsized":
                    self._file(parts[1], body=body, sized=False)
                elif len(parts) == 1:
                    self._file(parts[0], body=body)
                else:
                    self._status(404)

        def _page(self) -> None:
            text = b"<!doctype html><title>No media here</title><p>Nothing to fetch.</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _playlist(self) -> None:
            text = (
                b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n"
                b"#EXTINF:5.0,\ntone.mp3\n#EXT-X-ENDLIST\n"
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.apple.mpegurl")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
            text = f"{code}\n".encode()
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _file(
            self,
            name: str,
            *,
            body: bool,
            rate: float | None = None,
            drop: bool = False,
            sized: bool = True,
        ) -> None:
            path = server.files.get(name)
            if path is None:
                self._status(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            self.send_header("Content-Type", kind)
            if sized:
                self.send_header("Content-Length", str(len(data)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not body:
                return
            if drop:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if rate is None:
                self.wfile.write(data)
                return
            started = time.monotonic()
            for offset in range(0, len(data), PIECE_BYTES):
                self.wfile.write(data[offset : offset + PIECE_BYTES])
                self.wfile.flush()
                # Paced by the clock, not by sleeping a fixed time per piece.
                due = started + (offset + PIECE_BYTES) / rate
                time.sleep(max(0.0, due - time.monotonic()))

    return Handler
