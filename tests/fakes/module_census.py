"""The real sidecar, run as its own process, that writes down every module it imported:

    SIDECAR_MODULE_CENSUS=FILE python -m tests.fakes.module_census run --config FILE

At exit (after a SIGTERM shutdown) it writes the sorted names in sys.modules to FILE, one a line.
It imports nothing of its own beyond what the interpreter has loaded before `main` runs, so the list
is what `otlp-sidecar run` loads for that config over its whole life: start-up, traffic and shutdown.
"""

from __future__ import annotations

import atexit
import os
import sys


def _write_census() -> None:
    with open(os.environ["SIDECAR_MODULE_CENSUS"], "w") as out:
        out.write("\n".join(sorted(name for name, module in sys.modules.items() if module is not None)) + "\n")


if __name__ == "__main__":
    atexit.register(_write_census)
    from sidecar.__main__ import main

    sys.exit(main())
