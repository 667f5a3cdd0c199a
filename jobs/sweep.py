"""A Ray Tune sweep over distillation hyperparameters, each trial a full role-group distillation.

    python -m jobs.sweep --config jobs/configs/digits.yaml --num-samples 8 --output runs/sweep [--space FILE]
        [--set field=value ...]
        [--no-early-stopping] [--dry-run]

Trials run inside their own placement groups (a bundle per role rank plus the trial's driver),
report FD to an ASHA scheduler at every evaluation (`--no-early-stopping`: every trial runs to the
end), and log nested MLflow runs under one sweep run. OUTPUT/results.md ranks the trials; the best
student is copied to OUTPUT/best/student.
"""

import argparse
import math
from pathlib import Path

from jobs.cli import CONFIGS, add_overrides, run_main
from orchestrator.sweep import SweepSpec, check_space, load_space


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "digits.yaml")
    parser.add_argument(
        "--space",
        type=Path,
        default=CONFIGS / "sweep_space.yaml",
        help="YAML: config path -> {choice|grid|uniform|loguniform|randint: ...}",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=4,
        help="trials drawn from the space (each grid value counts once per sample)",
    )
    parser.add_argument("--output", type=Path, default=Path("runs/sweep"))
    add_overrides(parser, "override a field in every trial")
    parser.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ASHA stops trials whose FD trails at an evaluation (default); --no-early-stopping runs every trial to "
        "the end",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and every edge of the space, start nothing"
    )
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples {args.num_samples} must be at least 1")
    spec = SweepSpec(
        args.config, args.overrides, load_space(args.space), args.output, args.num_samples, args.early_stopping
    )
    base = check_space(spec)
    if args.dry_run:
        for key, domain in spec.space.items():
            print(f"{key}: {domain}")
        grid = math.prod(
            len(values) for domain in spec.space.values() for kind, values in domain.items() if kind == "grid"
        )
        print(
            f"# {args.num_samples * grid} trial(s) of {base.generator_steps} generator steps "
            f"({'ASHA early stopping' if args.early_stopping else 'no early stopping'}); space and config OK (dry "
            f"run: nothing started)"
        )
        return None
    from orchestrator.sweep import sweep

    return sweep(spec)


if __name__ == "__main__":
    run_main(main)
