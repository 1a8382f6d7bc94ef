"""The soak's short variant (`python -m bench.soak --seconds 60`), run as a user runs it:
a real sqld, two servers and three workers under a minute of mixed load, with a worker
killed -9 every 15 s and sqld stopped (SIGSTOP) for 2-4 s every 12 s. Passes when the
soak's own checks find no violation, and the run did exercise every fault."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SECONDS = 60


@pytest.mark.slow
def test_a_minute_of_mixed_load_with_kills_and_outages_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path,
):
    figures_path = tmp_path / "soak.json"
    command = [sys.executable, "-m", "bench.soak", "--seconds", str(SECONDS)]
    command += ["--json", str(figures_path), "--logs", str(tmp_path / "logs")]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 240, check=False
    )
    print(done.stdout[-6000:], done.stderr[-3000:])
    document = json.loads(figures_path.read_text())
    figures = document["figures"]
    assert document["violations"] == {}, document["violation_examples"]
    assert done.returncode == 0, done.stderr[-3000:]
    # The run did what it claims: jobs of every outcome, kills, outages and watchers.
    assert figures["jobs_submitted"] >= 300
    assert min(figures[f"jobs_{end}"] for end in ("succeeded", "failed", "cancelled")) > 0
    assert figures["kills"] >= 3
    assert figures["store_outages"] >= 4
    assert figures["watchers"] >= 20
    assert figures["subscriber_connects"] >= 2
