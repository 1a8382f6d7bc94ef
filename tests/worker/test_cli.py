"""`jobcontrol-worker` flags and environment that decide how it polls."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from jobcontrol.store import StoreConfig
from jobcontrol.worker import cli
from tests.conftest import BIN


def poll_interval(argv: list[str]) -> timedelta:
    args = cli.parser().parse_args(argv)
    return cli._poll_interval(args, StoreConfig.from_args(args))


def test_idle_polling_defaults_to_the_backend_and_yields_to_env_and_flag(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("POLL_INTERVAL_MS", raising=False)
    assert poll_interval([]) == timedelta(milliseconds=50)
    remote = ["--store-backend", "turso", "--store-url", "http://127.0.0.1:1"]
    assert poll_interval(remote) == timedelta(milliseconds=250)
    monkeypatch.setenv("POLL_INTERVAL_MS", "120")
    assert poll_interval(remote) == timedelta(milliseconds=120)
    assert poll_interval(["--poll-interval", "0.5"]) == timedelta(seconds=0.5)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_poll_interval_in_the_environment_is_a_clear_error(tmp_path: Path, value: str):
    result = subprocess.run(
        [str(BIN / "jobcontrol-worker"), "--store-path", str(tmp_path / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "POLL_INTERVAL_MS": value},
    )
    assert result.returncode == 1
    assert "POLL_INTERVAL_MS" in result.stderr
    assert "Traceback" not in result.stderr
