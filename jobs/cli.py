"""What every job shares: one-line errors for user mistakes, and torch thread set-up."""

import sys
from collections.abc import Callable

from workers.errors import UserError


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a job's `main`; a `UserError` becomes one line on stderr and exit status 2."""
    try:
        main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
