"""What every job shares: one-line errors for user mistakes, config names, the `--set` flag."""

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path

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


CONFIGS = Path(__file__).parent / "configs"


def config_file(name: str, prefix: str = "") -> Path:
    """A config named by its short name (jobs/configs/<prefix><name>.yaml) or given as a YAML path."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else CONFIGS / f"{prefix}{name}.yaml"


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set FIELD=VALUE`, repeatable: the job's config overrides, in order."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help=help)
