"""Run a benchmark end to end: prepare its data, train its teacher, distill its students, print one table.

    python -m jobs.benchmark fashion --output runs/fashion [--teacher DIR] [--dry-run]
    python -m jobs.benchmark jobs/configs/fashion_gpu.yaml --output runs/fashion-gpu

NAME is a benchmark config in jobs/configs (fashion: Fashion-MNIST on 2 CPU cores; fashion_gpu:
sized for one large GPU) or the path of one. Every finished step is reused, so a stopped run
continues where it stopped; --teacher benchmarks an existing teacher folder instead of training one.
"""

import argparse
from pathlib import Path

from jobs.cli import add_overrides, config_file, run_main
from orchestrator.config import BenchmarkConfig
from orchestrator.config_loading import load_config


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(prog="python -m jobs.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="fashion, fashion_gpu, or a benchmark YAML")
    parser.add_argument("--output", type=Path, required=True, help="folder for the teacher, students, table and grids")
    parser.add_argument(
        "--teacher", type=Path, default=None, help="benchmark this teacher folder instead of training one"
    )
    add_overrides(parser, "override a benchmark config field, e.g. --set eval_num=500")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the benchmark and every student's config, start nothing"
    )
    args = parser.parse_args(argv)
    config = load_config(BenchmarkConfig, config_file(args.name), args.overrides)
    from orchestrator.benchmark import run_benchmark, student_configs, teacher_config

    teacher = teacher_config(config, args.output.resolve())
    students = student_configs(config, args.teacher or Path(teacher.output), args.output.resolve())
    if args.dry_run:
        print(
            f"teacher: {args.teacher or teacher.output} "
            f"({'given' if args.teacher else 'trained from ' + str(config.teacher_recipe)})"
        )
        for name, student in students.items():
            print(
                f"{name}: {config.students[name].title}: {len(student.student.timesteps)} step(s) -> "
                f"{args.output / name}"
            )
        print("# benchmark and student configs OK (dry run: nothing started)")
        return None
    return run_benchmark(config, args.output, args.teacher)


if __name__ == "__main__":
    run_main(main)
