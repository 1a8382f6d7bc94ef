"""The soak's short variant (`python -m bench.soak --seconds 60`), run as a user runs it:
a real sqld, two servers and three workers under a minute of mixed load, with a worker
killed -9 every 15 s and sqld stopped (SIGSTOP) for 2-4 s every 12 s. Passes when the
soak's own checks find no violation, and the run did exercise every fault."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import TASKS_PRINTED
from tests.conftest import ROOT, wait_until

SECONDS = 60


@pytest.mark.slow
def test_a_minute_of_mixed_load_with_kills_and_outages_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path,
):
    figures_path = tmp_path / "soak.json"
    command = [sys.executable, "-X", "faulthandler", "-m", "bench.soak"]
    command += ["--seconds", str(SECONDS), "--json", str(figures_path)]
    command += ["--logs", str(tmp_path / "logs")]
    stdout, stderr = run_or_dump(command, tmp_path, timeout=SECONDS + 240)
    print(stdout[-6000:], stderr[-3000:])
    document = json.loads(figures_path.read_text())
    figures = document["figures"]
    assert document["violations"] == {}, document["violation_examples"]
    # The run did what it claims: jobs of every outcome, kills, outages and watchers.
    assert figures["jobs_submitted"] >= 300
    assert min(figures[f"jobs_{end}"] for end in ("succeeded", "failed", "cancelled")) > 0
    assert figures["kills"] >= 3
    assert figures["store_outages"] >= 4
    assert figures["watchers"] >= 20
    assert figures["subscriber_connects"] >= 2


def run_or_dump(command: list[str], directory: Path, timeout: float) -> tuple[str, str]:
    """Run the soak; if it outlives `timeout`, fail with where each of its asyncio tasks
    and threads was (it prints the tasks on SIGUSR1, faulthandler the threads on
    SIGABRT) and with its seed, instead of a bare timeout.
    It runs in its own process group, so its servers, workers and sqld go with it."""
    out_path, err_path = directory / "soak.out", directory / "soak.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=err, text=True, start_new_session=True
        )
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # its asyncio tasks, if the loop runs
            with contextlib.suppress(AssertionError):
                wait_until(lambda: TASKS_PRINTED in err_path.read_text(), timeout=10)
            process.send_signal(signal.SIGABRT)  # its threads
            process.wait(30)
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    if code is None:
        pytest.fail(
            f"the soak did not finish within {timeout:.0f} s. Its output:\n{stdout[-4000:]}\n"
            f"Its tasks and threads when stopped:\n{stderr[-20000:]}"
        )
    assert code == 0, f"the soak exited {code}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout, stderr
