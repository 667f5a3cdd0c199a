"""What every job shares: one-line errors for user mistakes, and torch thread set-up."""

import signal
import sys
from collections.abc import Callable

from orchestrator.stopping import StopRequested
from workers.errors import UserError


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a job's `main`; a `UserError` becomes one line on stderr and exit status 2, a requested stop
    (SIGTERM, Ctrl-C) one line and 128 + its signal, as a process ended by it (schedulers then rerun it)."""
    try:
        main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except StopRequested as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        raise SystemExit(128 + getattr(signal, stopped.signal_name, signal.SIGTERM)) from None
