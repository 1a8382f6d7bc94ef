"""The live dashboard at `/` of the HTTP listener: the static files in `dashboard/`
(index.html, app.css, and app.js, built from clients/typescript/dashboard by esbuild
and shipped in the package, so a `pip install` serves it without Node).

They are read once at start and served with their content type, an ETag and
`Cache-Control: no-cache` (the browser keeps them but asks each time whether they
changed, so an upgraded server is never shadowed by a stale app.js). Every other path
goes on to the API, which answers 404 for what it does not serve.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# What the page may load and call: its own files and its own origin's API, nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
}
_PATHS = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/app.css": "app.css",
}


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    content_type: bytes
    etag: bytes


def _load() -> dict[str, _File]:
    folder = resources.files("jobcontrol.server") / "dashboard"
    files = {}
    for name, content_type in _TYPES.items():
        body = (folder / name).read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        files[name] = _File(body, content_type, etag)
    return files


class Dashboard:
    """Serves the dashboard's files on GET and HEAD; hands everything else to `app`."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._files = _load()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = _PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if name is None or scope["method"] not in ("GET", "HEAD"):
            await self._app(scope, receive, send)
            return
        file = self._files[name]
        headers = [
            (b"content-type", file.content_type),
            (b"etag", file.etag),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        if name == "index.html":
            headers += [
                (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                (b"referrer-policy", b"no-referrer"),
            ]
        if file.etag in _if_none_match(scope):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(file.body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else file.body
        await send({"type": "http.response.body", "body": body})


def _if_none_match(scope: Scope) -> list[bytes]:
    for key, value in scope["headers"]:
        if key.lower() == b"if-none-match":
            return [tag.strip().removeprefix(b"W/") for tag in bytes(value).split(b",")]
    return []
