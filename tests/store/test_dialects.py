"""The core names a statement and each driver supplies it in its dialect: a name missing
from one dialect would fail only when that driver first ran the operation."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from jobcontrol.store import core
from jobcontrol.store.sql import postgres, sqlite

# Constants only one engine has a use for.
_ENGINE_ONLY = {"CHANNEL", "EVENT_LOCK", "JOB_COLUMNS"}  # JOB_COLUMNS: imported by one


def _statement_names(dialect: ModuleType) -> set[str]:
    return {
        name
        for name in vars(dialect)
        if name.isupper() and not name.startswith("_") and name not in _ENGINE_ONLY
    }


def test_both_dialects_define_the_same_statements():
    assert _statement_names(sqlite) == _statement_names(postgres)


def test_every_statement_the_core_names_is_in_both_dialects():
    text = Path(core.__file__).read_text()
    named = set(re.findall(r"tx\.sql\.([A-Z_]+)", text))
    named |= {"HEARTBEAT_WORKER", "SET_WORKER_STATE"}  # passed by name to _update_worker
    assert named <= _statement_names(sqlite)
    assert named <= _statement_names(postgres)
