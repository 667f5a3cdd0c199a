"""The demo: digits, a teacher, a one-step DMD2 student, a four-step DMD2 + SRL student, one table of them.

    python -m jobs.demo [--root runs/demo] [--fresh]

Steps whose output already exists are reused (delete the folder or pass --fresh to redo them).
"""

import argparse
import json
import shutil
from pathlib import Path

from jobs.cli import CONFIGS, run_main
from orchestrator.config import DistillConfig, TeacherTrainingConfig
from orchestrator.config_loading import load_config
from orchestrator.report import format_table, timed
from workers.errors import UserError

# Four steps [999, 749, 499, 249]: DMD2's DM loss composed with Imagine Flash's SRL and its noise-corrected
# sampler, 6 critic updates per generator update (5 before it, 1 beside it). Three choices together took
# it from FD 4.04 to 3.60 (mean of 5 sampling seeds; each pair of them measured worse), DMD2's order at
# ratio 6 to 3.18 (docs/methods.md): later steps match the DM loss only below their
# input's timestep, the last step trains half the time, and the DM loss's teacher guides with CFG 1.5.
FOUR_STEPS = [
    "student.timesteps=[999,749,499,249]",
    "dmd2.critic_updates_per_generator_update=6",
    "student.sampler=noise_corrected_ddim",
    "dmd2.dm_timesteps=below_input",
    "student.step_weights=[1,1,1,3]",
    "dmd2.guidance_scale=1.5",
    "dmd2.gan_generator_weight=3.0e-3",
    "imagine_flash.srl_weight=0.25",
    "imagine_flash.srl_teacher_steps=2",
    "imagine_flash.gamma_jitter=10",
    "imagine_flash.srl_guidance_scale=1.5",
]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", type=Path, default=Path("runs/data/digits"))
    parser.add_argument("--fresh", action="store_true", help="redo every step even when its output exists")
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluated row and seed")
    parser.add_argument(
        "--seeds", type=int, default=5, help="sampling seeds per row: the table shows their mean FD ± std"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.num < 10:
        raise UserError(
            f"--seeds {args.seeds} --num {args.num}: evaluate at least one seed of at least 10 samples (defaults: 5 "
            f"and 1000)"
        )
    if args.fresh:
        shutil.rmtree(args.root, ignore_errors=True)
    timings: dict[str, float] = {}
    from orchestrator.distill import role_cpus
    from orchestrator.placement import connect

    # One Ray cluster for every stage, sized for the largest (three role groups at once).
    connect(role_cpus(load_config(DistillConfig, CONFIGS / "digits.yaml")))

    with timed(timings, "data"):
        from jobs.prepare_data import main as prepare_data

        prepare_data(["--out", str(args.data)])
    teacher = args.root / "teacher"
    with timed(timings, "teacher"):
        if not teacher.exists():
            from orchestrator.teacher_trainer import train_teacher

            train_teacher(
                load_config(
                    TeacherTrainingConfig, CONFIGS / "teacher_digits.yaml", [f"data={args.data}", f"output={teacher}"]
                )
            )
    students = {"student": None, "student4": FOUR_STEPS}
    for name, overrides in students.items():
        with timed(timings, name):
            if not (args.root / name).exists():
                distill_student(args, teacher, args.root / name, overrides)

    with timed(timings, "evaluation"):
        rows = evaluate_rows(args, teacher)
    table = format_table(rows)
    print(table)
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    (args.root / "table.md").write_text(table + "\n")
    (args.root / "demo.json").write_text(json.dumps({"rows": rows, "seconds": timings}, indent=2))
    return rows


def distill_student(args, teacher: Path, destination: Path, extra: list[str] | None) -> None:
    from orchestrator.distill import distill

    run = args.root / f"distill-{destination.name}"
    overrides = [f"teacher={teacher}", f"data={args.data}", f"output={run}", *(extra or [])]
    summary = distill(load_config(DistillConfig, CONFIGS / "digits.yaml", overrides))
    shutil.copytree(summary["student"], destination)


def evaluate_rows(args, teacher: Path) -> list[dict]:
    from workers.data.shards import read_arrays
    from workers.evaluation.students import StudentEvaluator

    evaluate = StudentEvaluator(read_arrays(args.data), args.num, repeats=args.seeds)
    rows = []
    models = [
        ("teacher, 50 DDIM steps", teacher, 50),
        ("teacher, 4 DDIM steps", teacher, 4),
        ("student, 1 step", args.root / "student", None),
        ("student, 4 steps", args.root / "student4", None),
    ]
    for name, folder, steps in models:
        rows.append({"model": name, **evaluate(folder, steps)})
        evaluate.grid(folder, args.root / "grids" / (name.replace(", ", "_").replace(" ", "_") + ".png"), steps)
    return rows


if __name__ == "__main__":
    run_main(main)
