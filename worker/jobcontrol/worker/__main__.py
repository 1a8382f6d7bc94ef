"""`python -m jobcontrol.worker` is `jobcontrol-worker`."""

from __future__ import annotations

import sys

from jobcontrol.worker.cli import main

sys.exit(main())
