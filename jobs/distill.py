"""Distill a teacher into a few-step student with DMD2 on Ray role groups.

python -m jobs.distill --config jobs/configs/digits.yaml --output runs/digits [--dry-run] [--set field=value ...]
"""

import argparse
import os
from pathlib import Path

from jobs.cli import CONFIGS, add_overrides, run_main
from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config, to_dict


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="python -m jobs.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "digits.yaml")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="run folder: student/, checkpoints/, summary.json (default: the config's output)",
    )
    add_overrides(parser, "override a config field, e.g. --set generator_steps=50")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and its inputs, print the resolved config, start nothing",
    )
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"output={args.output}"] if args.output else [])
    config = load_config(DistillConfig, args.config, overrides)
    if args.dry_run:
        import yaml

        from orchestrator.placement import cluster_nodes, connect, local_nodes
        from orchestrator.preflight import plan, preflight

        attached = bool(os.environ.get("RAY_ADDRESS"))
        if attached:  # attaching starts nothing on the cluster
            connect()
        nodes = cluster_nodes() if attached else local_nodes()
        resume_from = preflight(config, nodes, may_grow=attached and config.cluster_autoscales)
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        where = f"the cluster at {os.environ['RAY_ADDRESS']}" if attached else "a local Ray cluster started for the run"
        for line in plan(config, resume_from, nodes, where):
            print(f"# {line}")
        print("# config and inputs OK (dry run: nothing started)")
        return None
    from orchestrator.distill import distill

    summary = distill(config)
    print(f"student saved to {summary['student']}; summary in {Path(config.output) / 'summary.json'}")
    return summary


if __name__ == "__main__":
    run_main(main)
