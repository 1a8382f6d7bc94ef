"""The JobStore: all state of the system, and the only channel between server and workers."""

from __future__ import annotations

from jobcontrol.store.config import StoreConfig, open_store
from jobcontrol.store.protocol import (
    Completion,
    HeartbeatAck,
    JobFilter,
    JobPage,
    JobStore,
    PruneResult,
    ReapResult,
    Submitted,
)

__all__ = [
    "Completion",
    "HeartbeatAck",
    "JobFilter",
    "JobPage",
    "JobStore",
    "PruneResult",
    "ReapResult",
    "StoreConfig",
    "Submitted",
    "open_store",
]
