"""Builds the TypeScript client (tsc) and runs its Node tests (`node --test`), which
start their own `jobcontrol-server --with-worker` and drive it over real gRPC.

Needs `make install` (node_modules in clients/typescript/).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
TSC = CLIENT / "node_modules" / ".bin" / "tsc"
SERVER = Path(sys.executable).parent / "jobcontrol-server"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs a command in its own process group, killed whole (with the servers the Node
    tests start) if it outlives `timeout`."""
    with subprocess.Popen(
        list(args),
        cwd=CLIENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # The Node tests start this venv's server, whatever PATH says.
        env={**os.environ, "JOBCONTROL_SERVER_BIN": str(SERVER)},
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{' '.join(args)} timed out after {timeout}s:\n{stdout}{stderr}")
    return subprocess.CompletedProcess(list(args), process.returncode, stdout, stderr)


def test_typescript_client_builds_and_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: run `make install`")
    if not TSC.exists():
        pytest.fail(f"{TSC.relative_to(ROOT)} is missing: run `make install` (npm ci)")

    build = run(str(TSC), "-p", ".", timeout=300)
    assert build.returncode == 0, "tsc failed:\n" + build.stdout + build.stderr

    files = sorted(path.relative_to(CLIENT).as_posix() for path in CLIENT.glob("test/*.test.mjs"))
    assert files, "no clients/typescript/test/*.test.mjs"
    tests = run(node, "--test", "--test-reporter=tap", *files, timeout=600)
    assert tests.returncode == 0, "node --test failed:\n" + tests.stdout + tests.stderr
    passed = re.search(r"^# pass (\d+)$", tests.stdout, re.MULTILINE)
    assert passed, tests.stdout
    assert int(passed.group(1)) > 0, "node --test ran no test:\n" + tests.stdout
    assert re.search(r"^# fail 0$", tests.stdout, re.MULTILINE), tests.stdout
