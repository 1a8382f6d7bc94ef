"""The dashboard the Python package ships (server/jobcontrol/server/dashboard/app.js) is
the build of its TypeScript source as it is now: `npm run build:dashboard`, run again
into a temporary folder, gives the same bytes. Needs `make install` (npm ci)."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.dashboard.conftest import ROOT

CLIENT = ROOT / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"
SHIPPED = ROOT / "server" / "jobcontrol" / "server" / "dashboard" / "app.js"


def build_steps() -> list[list[str]]:
    script = json.loads((CLIENT / "package.json").read_text())["scripts"]["build:dashboard"]
    return [shlex.split(step) for step in script.split("&&")]


def test_the_shipped_dashboard_is_the_build_of_its_source(tmp_path: Path):
    if not (BIN / "esbuild").exists():
        pytest.fail(f"{BIN.relative_to(ROOT)}/esbuild is missing: run `make install` (npm ci)")
    steps = build_steps()
    assert [step[0] for step in steps] == ["tsc", "esbuild"]
    typecheck, bundle = steps
    outfile = [arg for arg in bundle if arg.startswith("--outfile=")]
    assert outfile == [f"--outfile={Path('../../server/jobcontrol/server/dashboard/app.js')}"]
    rebuilt = tmp_path / "app.js"
    bundle = [arg if arg != outfile[0] else f"--outfile={rebuilt}" for arg in bundle]

    for step in (typecheck, [*bundle, "--log-level=warning"]):
        done = subprocess.run(
            [str(BIN / step[0]), *step[1:]],
            cwd=CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(step)} failed:\n{done.stdout}{done.stderr}"

    assert rebuilt.read_bytes() == SHIPPED.read_bytes(), (
        "server/jobcontrol/server/dashboard/app.js is not the build of "
        "clients/typescript/dashboard: run `npm run build:dashboard` in clients/typescript "
        "and commit it"
    )
