"""`python -m jobcontrol.server` is `jobcontrol-server`."""

from __future__ import annotations

import sys

from jobcontrol.server.cli import main

sys.exit(main())
