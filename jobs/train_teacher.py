"""Train a class-conditional diffusion teacher on a Parquet data set with Ray Train and DeepSpeed.

python -m jobs.train_teacher [--config FILE] [--set field.path=value ...]
"""

import argparse
from pathlib import Path

from jobs.cli import add_overrides, run_main
from orchestrator.config import TeacherTrainingConfig
from orchestrator.config_loading import load_config, to_dict


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "teacher_digits.yaml")
    add_overrides(parser, "override a config field, e.g. --set steps=500")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and inputs, print the resolved config, start nothing"
    )
    args = parser.parse_args(argv)
    config = load_config(TeacherTrainingConfig, args.config, args.overrides)
    if args.dry_run:
        import yaml

        from workers.data.shards import read_info

        read_info(config.data)
        print(yaml.safe_dump(to_dict(config), sort_keys=False))
        return config.output
    from orchestrator.teacher_trainer import train_teacher

    output = train_teacher(config)
    print(f"teacher saved to {output}")
    return output


if __name__ == "__main__":
    run_main(main)
