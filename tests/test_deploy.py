"""The multi-machine shape (docker-compose.yml and the Dockerfiles). Docker cannot run
on these machines, so the files are parsed and checked against what the code expects;
the health-check command they use is run for real against a server."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, ServerProcess, free_port

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_runs_sqld_two_servers_and_scalable_workers(compose: dict[str, Any]):
    services = compose["services"]
    by_default = {name for name, service in services.items() if "profiles" not in service}
    assert by_default == {"sqld", "server", "worker"}
    assert services["sqld"]["image"].startswith("ghcr.io/tursodatabase/libsql-server")
    assert services["server"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert "ports" not in services["worker"]  # workers only dial out: scale freely
    for name in ("server", "worker"):
        assert services[name]["depends_on"]["sqld"]["condition"] == "service_healthy"


def test_servers_and_workers_use_the_turso_backend_on_sqld(compose: dict[str, Any]):
    services = compose["services"]
    sqld_port = services["sqld"]["environment"]["SQLD_HTTP_LISTEN_ADDR"].rsplit(":", 1)[1]
    for name in ("server", "worker"):
        env = services[name]["environment"]
        assert env["JOB_STORE_BACKEND"] == "turso"
        assert env["TURSO_DATABASE_URL"] == f"http://sqld:{sqld_port}"


def test_sqld_serves_one_connection_at_a_time(compose: dict[str, Any]):
    """Or sqld 0.24 can stop accepting writes for good under several writers (docs/ops.md)."""
    assert compose["services"]["sqld"]["environment"]["SQLD_MAX_CONCURRENT_CONNECTIONS"] == "1"


def test_the_postgres_profile_runs_postgres_two_servers_and_workers(compose: dict[str, Any]):
    services = compose["services"]
    shape = {
        name for name, service in services.items() if "postgres" in service.get("profiles", [])
    }
    assert shape == {"postgres", "server-postgres", "worker-postgres"}
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    role = postgres["environment"]["POSTGRES_USER"]
    database = postgres["environment"]["POSTGRES_DB"]
    for name, twin in (("server-postgres", "server"), ("worker-postgres", "worker")):
        service = services[name]
        assert service["build"] == services[twin]["build"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["JOB_STORE_BACKEND"] == "postgres"
        url = re.fullmatch(
            r"postgresql://([^:@]+)(?::[^@]*)?@postgres:5432/(\w+)", env["DATABASE_URL"]
        )
        assert url is not None, env["DATABASE_URL"]
        assert url.groups() == (role, database), env["DATABASE_URL"]
    assert services["server-postgres"]["deploy"]["replicas"] == 2
    assert "ports" not in services["worker-postgres"]
    host_ports = [
        m.split(":")[0] for s in ("server", "server-postgres") for m in services[s]["ports"]
    ]
    assert len(set(host_ports)) == len(host_ports), "both shapes can run at once"


def test_server_port_and_health_check_match_its_listen_address(compose: dict[str, Any]):
    server = compose["services"]["server"]
    port = server["environment"]["JOBCONTROL_LISTEN"].rsplit(":", 1)[1]
    assert all(mapping.endswith(f":{port}") for mapping in server["ports"])
    assert server["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "jobcontrol.server.healthcheck",
    ]
    assert compose["services"]["sqld"]["healthcheck"]["test"][0] == "CMD"


@pytest.mark.parametrize("part", ["server", "worker"])
def test_dockerfiles_copy_what_exists_and_install_the_package(compose: dict[str, Any], part: str):
    build = compose["services"][part]["build"]
    dockerfile = ROOT / build["context"] / build["dockerfile"]
    text = dockerfile.read_text()
    for source in re.findall(r"^COPY (\S+) ", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
    assert "pip install --no-cache-dir ." in text
    assert f'ENTRYPOINT ["jobcontrol-{part}"]' in text
    assert "USER jobcontrol" in text
    if part == "worker":
        assert "ffmpeg" in text  # audio.transcode needs it


def test_the_worker_image_has_ffmpeg_and_yt_dlp():
    """ffmpeg from the distribution (audio.transcode, media.fetch's audio_only), yt-dlp
    as a dependency of the package the image installs (media.fetch imports it)."""
    text = (ROOT / "worker" / "Dockerfile").read_text()
    installs = re.search(r"apt-get install -y --no-install-recommends ([^\n&]+)", text)
    assert installs is not None, "the worker image installs nothing with apt-get"
    assert "ffmpeg" in installs.group(1).split()  # the Debian package brings ffprobe too
    assert "RUN pip install --no-cache-dir . " in text
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"yt-dlp\s*>=", d) for d in dependencies), dependencies
    assert importlib.util.find_spec("yt_dlp") is not None, "pip install -e . brings yt-dlp"


def test_the_health_check_command_reports_serving(server: ServerProcess):
    result = subprocess.run(
        [sys.executable, "-m", "jobcontrol.server.healthcheck", server.address],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_the_health_check_command_fails_without_a_server(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "jobcontrol.server.healthcheck", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "unhealthy: UNAVAILABLE" in result.stderr
