"""The dashboard at `/` of a real `jobcontrol-server --with-worker --http-listen`, in
headless Chromium: what a user does and sees, with every job change arriving by
stream (the page is never reloaded). The screenshots of each view land in
docs/screenshots/."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.dashboard.conftest import screenshot
from tests.polling import wait_until
from tests.server.test_http import HttpServer, start_http_server

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
TOKEN = "dashboard-token"
STREAM_TIMEOUT_MS = 15_000


@pytest.fixture
def http(tmp_path: Path) -> Iterator[HttpServer]:
    started = start_http_server(tmp_path, "--with-worker")
    try:
        yield started
    finally:
        started.process.stop()
    # The server logged no error of its own (a failing job's traceback is the job's).
    assert " ERROR jobcontrol.server" not in started.process.log


def open_dashboard(page: Page, http: HttpServer, path: str = "/") -> None:
    page.goto(http.base + path)
    expect(page.locator("#connection")).to_have_text("live", timeout=STREAM_TIMEOUT_MS)


def submit_from_page(page: Page, job_type: str, payload: dict[str, object]) -> str:
    page.get_by_label("Type", exact=True).first.fill(job_type)
    page.get_by_label("Payload (JSON)").fill(json.dumps(payload))
    page.get_by_role("button", name="Submit").click()
    link = page.locator("#submit-result a")
    expect(link).to_be_visible(timeout=STREAM_TIMEOUT_MS)
    return link.inner_text()


def job_row(page: Page, job_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#jobs tr[data-job-id="{job_id}"]')


def submit_grpc(http: HttpServer, job_type: str, payload: dict[str, object]) -> str:
    request = api.SubmitJobRequest(type=job_type, labels={"team": "web"})
    request.payload.update(payload)
    with http.process.channel() as channel:
        return job_control_pb2_grpc.JobControlStub(channel).SubmitJob(request).job.id


def get_job(http: HttpServer, job_id: str) -> pb.Job:
    with http.process.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        return stub.GetJob(api.GetJobRequest(job_id=job_id)).job


def test_the_files_are_served_with_their_types_and_unknown_paths_are_404(http: HttpServer):
    import urllib.error
    import urllib.request

    for path, content_type in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ]:
        with urllib.request.urlopen(http.base + path, timeout=10) as response:
            assert response.headers["Content-Type"].startswith(content_type)
            assert response.headers["Cache-Control"] == "no-cache"
            etag = response.headers["ETag"]
        revalidate = urllib.request.Request(http.base + path, headers={"If-None-Match": etag})
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(revalidate, timeout=10)
        not_modified.value.close()
        assert not_modified.value.code == 304
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(http.base + "/nope.js", timeout=10)
    missing.value.close()
    assert missing.value.code == 404


def test_a_job_submitted_from_the_page_shows_its_progress_to_succeeded(
    page: Page, http: HttpServer
):
    open_dashboard(page, http)

    job_id = submit_from_page(page, "demo.sleep", {"seconds": 4, "steps": 4})

    expect(job_row(page, job_id)).to_be_visible()
    page.locator("#submit-result a").click()
    bar = page.get_by_label("Job progress")
    seen: set[str] = set()

    def finished() -> bool:
        seen.add(bar.get_attribute("value") or "")
        return page.locator("#job-state").inner_text() == "SUCCEEDED"

    wait_until(finished, timeout=30, what="the job page to show SUCCEEDED")
    assert seen & {"25", "50", "75"}, f"the bar never stood between 0 and 100: {seen}"
    expect(bar).to_have_attribute("value", "100")
    expect(page.locator("#job-result")).to_contain_text('"slept_seconds": 4')
    kinds = page.locator("#history tbody tr td:nth-child(3)").all_inner_texts()
    assert kinds[0] == "SUBMITTED"
    assert kinds.count("PROGRESS") >= 1
    assert kinds[-1] == "SUCCEEDED"
    screenshot(page, "job")

    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(job_row(page, job_id)).to_have_attribute("data-state", "SUCCEEDED")
    # A few more, for a screenshot of a list with something in each state.
    others = {
        "RUNNING": submit_grpc(http, "demo.sleep", {"seconds": 60, "steps": 60}),
        "FAILED": submit_grpc(http, "demo.sleep", {"seconds": 0, "steps": 1, "fail": "permanent"}),
        "PENDING": submit_grpc(http, "report.render", {"month": "2026-11"}),
    }
    for state, other in others.items():
        expect(job_row(page, other)).to_have_attribute(
            "data-state", state, timeout=STREAM_TIMEOUT_MS
        )
    expect(page.locator("#queue tr[data-type='report.render'] td").first).to_have_text("1")
    screenshot(page, "jobs")


def test_bad_input_in_the_submit_form_is_refused_with_a_reason(page: Page, http: HttpServer):
    open_dashboard(page, http)
    result = page.locator("#submit-result")

    page.get_by_label("Payload (JSON)").fill('{"seconds": ')
    page.get_by_role("button", name="Submit").click()
    expect(result).to_contain_text("Not submitted: ")
    expect(result).to_contain_text("JSON")

    page.get_by_label("Payload (JSON)").fill("[1, 2]")
    page.get_by_role("button", name="Submit").click()
    expect(result).to_have_text("Not submitted: the payload must be a JSON object")

    page.get_by_label("Type", exact=True).first.fill("no spaces allowed")
    page.get_by_label("Payload (JSON)").fill("{}")
    page.get_by_role("button", name="Submit").click()
    expect(result).to_contain_text("Not submitted: ")
    expect(result).to_contain_text("type")
    assert page.locator("#jobs tbody tr").count() == 0


def test_a_running_job_is_cancelled_from_the_page(page: Page, http: HttpServer):
    open_dashboard(page, http)
    job_id = submit_from_page(page, "demo.sleep", {"seconds": 120, "steps": 120})
    row = job_row(page, job_id)
    expect(row).to_have_attribute("data-state", "RUNNING", timeout=STREAM_TIMEOUT_MS)

    row.get_by_role("button", name=f"Cancel job {job_id}").click()

    expect(row).to_have_attribute("data-state", "CANCELLED", timeout=STREAM_TIMEOUT_MS)
    job = get_job(http, job_id)
    assert job.state == pb.JOB_STATE_CANCELLED
    assert job.cancel_reason == "cancelled from the dashboard"


def test_a_job_submitted_by_grpcurl_appears_without_a_reload(page: Page, http: HttpServer):
    open_dashboard(page, http)
    page.evaluate("window.notReloaded = true")
    page.get_by_label("Label").fill("from=grpcurl")

    done = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            json.dumps({"type": "t.grpcurl", "labels": {"from": "grpcurl"}}),
            http.process.address,
            "jobcontrol.v1.JobControl/SubmitJob",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = json.loads(done.stdout)["job"]["id"]
    # Another job, not matching the label filter, stays out of the list.
    with http.process.channel() as channel:
        job_control_pb2_grpc.JobControlStub(channel).SubmitJob(api.SubmitJobRequest(type="t.other"))

    row = job_row(page, job_id)
    expect(row).to_have_attribute("data-state", "PENDING", timeout=STREAM_TIMEOUT_MS)
    expect(row.locator(".labels")).to_have_text("from=grpcurl")
    expect(page.locator("#queue tr[data-type='t.other'] td").first).to_have_text("1")
    assert page.locator("#jobs tbody tr").count() == 1
    assert page.evaluate("window.notReloaded") is True


def test_a_failed_job_shows_its_error_with_the_traceback_and_is_retried(
    page: Page, http: HttpServer
):
    open_dashboard(page, http)
    job_id = submit_from_page(page, "demo.sleep", {"seconds": 0, "steps": 1, "fail": "permanent"})
    page.locator("#submit-result a").click()

    expect(page.locator("#job-state")).to_have_text("FAILED", timeout=STREAM_TIMEOUT_MS)
    expect(page.locator("#job-error")).to_contain_text("demo.sleep was asked to fail (permanent)")
    traceback = page.locator("#job-traceback")
    expect(traceback).to_contain_text("Traceback")
    expect(traceback).to_contain_text("PermanentError")
    screenshot(page, "job-failed")

    page.get_by_role("button", name=f"Retry job {job_id}").click()

    expect(page.locator("#history")).to_contain_text("RETRIED", timeout=STREAM_TIMEOUT_MS)
    expect(page.locator("#job-state")).to_have_text("FAILED", timeout=STREAM_TIMEOUT_MS)
    job = get_job(http, job_id)
    assert job.attempt == 2


def set_visibility(page: Page, state: str) -> None:
    """What switching tabs does to a page (headless tabs all count as visible)."""
    page.evaluate(
        """(state) => {
            Object.defineProperty(document, "visibilityState", {
                configurable: true, get: () => state,
            });
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


def test_many_tabs_share_the_browsers_six_connections_by_pausing_hidden_ones(
    page: Page, http: HttpServer
):
    """Over HTTP/1.1 Chromium opens at most 6 connections to one origin; each open tab
    holds the job list's stream, so the seventh tab would never load. A hidden tab
    gives its stream back, and resumes it (missing nothing) when shown again."""
    tabs = [page, *(page.context.new_page() for _ in range(7))]
    for tab in tabs:
        open_dashboard(tab, http)
        set_visibility(tab, "hidden")
        expect(tab.locator("#connection")).to_have_text("paused while the tab is hidden")
    with http.process.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        missed = stub.SubmitJob(api.SubmitJobRequest(type="t.while-hidden")).job.id

    set_visibility(page, "visible")

    expect(page.locator("#connection")).to_have_text("live", timeout=STREAM_TIMEOUT_MS)
    expect(job_row(page, missed)).to_have_attribute("data-state", "PENDING")
    with http.process.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        live = stub.SubmitJob(api.SubmitJobRequest(type="t.after")).job.id
    expect(job_row(page, live)).to_be_visible(timeout=STREAM_TIMEOUT_MS)


def test_the_workers_view_lists_the_servers_worker(page: Page, http: HttpServer):
    open_dashboard(page, http, "/#/workers")

    row = page.locator("#workers tbody tr[data-state='ACTIVE']")
    expect(row).to_have_count(1, timeout=STREAM_TIMEOUT_MS)
    expect(row).to_contain_text("demo.sleep")
    expect(row).to_contain_text("busy")
    expect(row.locator("time")).to_contain_text("s ago")
    screenshot(page, "workers")


def test_the_workers_view_shows_a_silent_worker_as_lost(page: Page, tmp_path: Path):
    http = start_http_server(tmp_path, "--worker-lost-after", "1s", "--reap-interval", "200ms")
    worker = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jobcontrol-worker"),
            "--store-path",
            str(http.process.store_path),
            "--name",
            "doomed",
            "--types",
            "demo.sleep",
            "--heartbeat-interval",
            "200ms",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        open_dashboard(page, http, "/#/workers")
        row = page.locator("#workers tbody tr", has_text="doomed")
        expect(row).to_have_attribute("data-state", "ACTIVE", timeout=STREAM_TIMEOUT_MS)

        worker.kill()  # no goodbye: its heartbeats just stop

        expect(row).to_have_attribute("data-state", "LOST", timeout=30_000)
        expect(row.locator(".state")).to_have_text("LOST")
        screenshot(page, "workers-lost")
    finally:
        worker.kill()
        worker.wait(10)
        http.process.stop()


def test_with_auth_on_the_token_is_asked_once_for_the_tab(page: Page, tmp_path: Path):
    http = start_http_server(tmp_path, "--with-worker", env={"JOBCONTROL_AUTH_TOKEN": TOKEN})
    try:
        page.goto(http.base + "/")
        token = page.get_by_label("Token")
        expect(token).to_be_visible(timeout=STREAM_TIMEOUT_MS)
        screenshot(page, "sign-in")
        token.fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(token).to_be_visible(timeout=STREAM_TIMEOUT_MS)  # asked again

        token.fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()

        expect(page.locator("#connection")).to_have_text("live", timeout=STREAM_TIMEOUT_MS)
        job_id = submit_from_page(page, "demo.sleep", {"seconds": 0, "steps": 1})
        expect(job_row(page, job_id)).to_have_attribute(
            "data-state", "SUCCEEDED", timeout=STREAM_TIMEOUT_MS
        )
        page.reload()
        expect(page.locator("#connection")).to_have_text("live", timeout=STREAM_TIMEOUT_MS)
        expect(job_row(page, job_id)).to_be_visible()
        assert page.get_by_label("Token").is_hidden()
        assert page.evaluate("sessionStorage.getItem('jobcontrol.token')") == TOKEN
    finally:
        http.process.stop()
