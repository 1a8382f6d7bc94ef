"""Fixtures shared with tests/worker: real `jobcontrol-worker` processes, always stopped."""

from tests.worker.conftest import start_worker

__all__ = ["start_worker"]
