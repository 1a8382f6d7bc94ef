"""The API files: buf lint and format, breaking changes, and stubs that match."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "node_modules" / ".bin" / "buf"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        pytest.fail("buf is missing: run `make install` (npm ci) first")
    return BUF


def test_buf_lint_passes(buf: Path):
    result = run(buf, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_has_no_diff(buf: Path):
    result = run(buf, "format", "--diff", "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_main(buf: Path):
    has_main = run("git", "rev-parse", "--verify", "--quiet", "refs/heads/main").returncode == 0
    if not has_main:
        pytest.skip("no local main branch to compare with")
    has_protos = run("git", "cat-file", "-e", "main:buf.yaml").returncode == 0
    if not has_protos:
        pytest.skip("main has no buf module yet")
    result = run(buf, "breaking", "--against", ".git#branch=main")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stubs_match_the_protos():
    result = run(sys.executable, "scripts/gen_protos.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_import_and_describe_the_service():
    from jobcontrol.v1 import job_control_pb2

    service = job_control_pb2.DESCRIPTOR.services_by_name["JobControl"]
    assert {m.name for m in service.methods} == {
        "SubmitJob",
        "SubmitJobs",
        "GetJob",
        "ListJobs",
        "WatchJob",
        "WatchJobs",
        "CancelJob",
        "RetryJob",
        "ListWorkers",
    }
