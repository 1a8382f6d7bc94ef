"""The TypeScript client's web entry (`@jobcontrol/client/web`) in headless Chromium: a
plain page on another origin runs the README's five lines as written (bundled by
esbuild), submitting a job, following its WatchJob stream and cancelling it, against
the HTTP listener of a real server, over Connect and over gRPC-Web."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.dashboard.conftest import ROOT, screenshot
from tests.doc_blocks import blocks
from tests.polling import wait_until
from tests.server.test_http import start_http_server

CLIENT = ROOT / "clients" / "typescript"
ESBUILD = CLIENT / "node_modules" / ".bin" / "esbuild"
README_URL = "http://127.0.0.1:8080"
PACKAGE = "@jobcontrol/client/web"

# What the README's block leaves to the page: a token, a button, somewhere to show.
PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A page using the web client</title></head>
<body>
<button id="cancel" type="button">Cancel</button>
<ol id="events"></ol>
<script type="module">
const token = undefined;
const cancelButton = document.getElementById("cancel");
window.seen = [];
window.addEventListener("unhandledrejection", (event) => {
  window.failed = String(event.reason);
});
function show(job) {
  window.seen.push({ state: job.state, percent: job.progress?.percent ?? 0 });
  const item = document.createElement("li");
  item.textContent = `state ${job.state}, ${job.progress?.percent ?? 0}%`;
  document.getElementById("events").append(item);
}
window.jobId = undefined;
BLOCK
window.jobId = job.id;
window.done = true;
</script>
</body>
</html>
"""


def readme_block() -> str:
    found = [block for block in blocks(ROOT / "README.md") if PACKAGE in block.code]
    assert len(found) == 1, "the README shows the web client in one block"
    code = found[0].code
    assert README_URL in code
    return code


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def page_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served on its own origin (another port than the API's)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("protocol", ["connect", "grpc-web"])
def test_a_page_submits_watches_and_cancels_with_the_web_client(
    page: Page, page_site: tuple[Path, str], tmp_path: Path, protocol: str
):
    if not ESBUILD.exists():
        pytest.fail(f"{ESBUILD.relative_to(ROOT)} is missing: run `make install` (npm ci)")
    site, origin = page_site
    subprocess.run(
        [
            str(ESBUILD),
            "src/web.ts",
            "--bundle",
            "--format=esm",
            "--target=es2022",
            f"--outfile={site / 'jobcontrol-web.js'}",
            "--log-level=warning",
        ],
        cwd=CLIENT,
        check=True,
        timeout=120,
    )
    http = start_http_server(tmp_path, "--with-worker", "--http-cors-origin", origin)
    try:
        code = readme_block().replace(PACKAGE, "./jobcontrol-web.js")
        code = code.replace(README_URL, http.base)
        if protocol == "grpc-web":
            code = code.replace("{ token }", '{ token, protocol: "grpc-web" }')
        (site / "index.html").write_text(PAGE.replace("BLOCK", code))

        page.goto(origin + "/index.html")

        def running() -> bool:
            failed = page.evaluate("window.failed")
            assert failed is None, failed
            seen = page.evaluate("window.seen")
            return any(s["state"] == pb.JOB_STATE_RUNNING and s["percent"] > 0 for s in seen)

        wait_until(running, timeout=30, what="the page to see the job make progress")
        page.get_by_role("button", name="Cancel").click()
        wait_until(
            lambda: page.evaluate("window.done === true || window.failed"),
            timeout=30,
            what="the watch to end",
        )
        assert page.evaluate("window.failed") is None
        seen = page.evaluate("window.seen")
        assert seen[-1]["state"] == pb.JOB_STATE_CANCELLED
        with http.process.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            job_id = page.evaluate("window.jobId")
            assert stub.GetJob(api.GetJobRequest(job_id=job_id)).job.state == (
                pb.JOB_STATE_CANCELLED
            )
        if protocol == "connect":
            screenshot(page, "web-client")
        log = http.process.log
    finally:
        http.process.stop()
    assert " ERROR jobcontrol.server" not in log, json.dumps(log)
