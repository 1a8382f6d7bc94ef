"""`--handlers MODULE` loads user handlers next to the built-in ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

from jobcontrol.jobs import JobSpec, JobState
from tests.conftest import BIN, ROOT, wait_until
from tests.worker.conftest import StartWorker, SyncStore


def test_a_worker_runs_handlers_from_a_user_module(
    store: SyncStore, store_path: Path, start_worker: StartWorker
):
    worker = start_worker(
        store_path, "--handlers", "tests.worker.sample_handlers", env={"PYTHONPATH": str(ROOT)}
    )
    echo = store.create_job(JobSpec(type="sample.echo", payload={"hello": "world"})).job
    sleep = store.create_job(JobSpec(type="demo.sleep", payload={"seconds": 0})).job

    def done() -> bool:
        return all(store.get_job(j.id).state.is_terminal for j in (echo, sleep))

    wait_until(done, timeout=20, what="both jobs to finish")
    finished = store.get_job(echo.id)
    assert finished.state is JobState.SUCCEEDED, worker.log
    assert finished.result == {"echo": {"hello": "world"}, "attempt": 1}
    assert store.get_job(sleep.id).state is JobState.SUCCEEDED


def test_handlers_are_imported_from_the_working_directory_without_pythonpath(
    tmp_path: Path, store: SyncStore, store_path: Path, start_worker: StartWorker
):
    project = tmp_path / "project"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text("")
    (project / "myapp" / "jobs.py").write_text(
        "from jobcontrol.worker import handler\n\n\n"
        '@handler("myapp.hello")\n'
        "def hello(ctx):\n"
        '    return {"hello": ctx.payload["name"]}\n'
    )
    no_path = {"PYTHONPATH": ""}
    worker = start_worker(store_path, "--handlers", "myapp.jobs", env=no_path, cwd=project)
    job = store.create_job(JobSpec(type="myapp.hello", payload={"name": "world"})).job

    wait_until(
        lambda: store.get_job(job.id).state.is_terminal, timeout=20, what="the job to finish"
    )
    finished = store.get_job(job.id)
    assert finished.state is JobState.SUCCEEDED, worker.log
    assert finished.result == {"hello": "world"}


def test_a_handler_module_that_cannot_be_imported_is_a_clear_error(tmp_path: Path):
    result = subprocess.run(
        [
            str(BIN / "jobcontrol-worker"),
            "--store-path",
            str(tmp_path / "jobs.db"),
            "--handlers",
            "no_such_module_anywhere",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot load handlers" in result.stderr
    assert "no_such_module_anywhere" in result.stderr
