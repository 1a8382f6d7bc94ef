"""`jobcontrol-server`: declared now so the command exists; its runtime arrives in a later issue."""

from __future__ import annotations

import sys


def main() -> int:
    print("jobcontrol-server is not built yet: it arrives with a later issue", file=sys.stderr)
    return 2
