"""`jobcontrol-worker` flags and environment that decide how it polls."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from jobcontrol.store import StoreConfig
from jobcontrol.worker import cli
from tests.conftest import BIN, run_cli


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


def test_help_states_durations_once_and_every_default_in_their_syntax():
    result = run_cli("jobcontrol-worker", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    flat = " ".join(text.split())
    for mess in ("days,", "0:00:", "(default: None)", "(default: )", "SECONDS"):
        assert mess not in text, mess
    assert flat.count("a bare number is seconds") == 1
    for flag in ("--lease-timeout", "--heartbeat-interval", "--poll-interval", "--drain-grace"):
        assert f"{flag} DURATION" in text
    assert "worker's last heartbeat (default: 30s)" in flat
    assert "--log-format {text,json}" in text
    options = [a for a in cli.parser()._actions if a.option_strings]
    assert [a.dest for a in options if not a.help] == []


def test_durations_take_units_and_bare_numbers_stay_seconds():
    args = cli.parser().parse_args(
        ["--lease-timeout", "2m", "--heartbeat-interval", "20", "--drain-grace", "1500ms"]
    )
    assert args.lease_timeout == timedelta(minutes=2)
    assert args.heartbeat_interval == timedelta(seconds=20)
    assert args.drain_grace == timedelta(milliseconds=1500)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--lease-timeout", "soon"], {}, "--lease-timeout"),
        (["--drain-grace", "0"], {}, "--drain-grace"),
        (["--poll-interval", "2 weeks"], {}, "--poll-interval"),
        (["--concurrency", "0"], {}, "--concurrency"),
        (["--log-level", "loud"], {}, "--log-level"),
        ([], {"JOBCONTROL_LOG_LEVEL": "loud"}, "JOBCONTROL_LOG_LEVEL"),
        ([], {"JOBCONTROL_LOG_FORMAT": "xml"}, "JOBCONTROL_LOG_FORMAT"),
    ],
)
def test_a_bad_flag_is_one_clear_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
):
    result = run_cli("jobcontrol-worker", "--store-path", str(tmp_path / "jobs.db"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("jobcontrol-worker: ")
    assert named in result.stderr
    assert not (tmp_path / "jobs.db").exists()
