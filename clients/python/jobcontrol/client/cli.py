"""`jobctl`: declared now so the command exists; it arrives with the clients issue."""

from __future__ import annotations

import sys


def main() -> int:
    print("jobctl is not built yet: it arrives with the clients issue", file=sys.stderr)
    return 2
