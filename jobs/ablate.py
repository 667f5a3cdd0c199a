"""Imagine Flash's ablation at small scale: the full few-step student, each part switched off, the teacher.

    python -m jobs.ablate --output runs/ablation [--config jobs/configs/imagine_flash.yaml] [--set field=value ...] [--dry-run] [--fresh]

Each variant is a full distillation (its own MLflow run, nested under one ablation run) into
OUTPUT/<variant>/student; the teacher is sampled with DDIM at the student's step count and at 50.
OUTPUT/table.md (also logged to MLflow) holds FD and class accuracy per row. Variants already done
(OUTPUT/<variant>/summary.json exists) are reused unless --fresh.
"""

import argparse
import json
import shutil
from pathlib import Path

from jobs.cli import run_main
from jobs.report import format_table, timed
from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config

CONFIGS = Path(__file__).parent / "configs"

VARIANTS = {
    "full": [],
    "no_noise_correction": ["student.sampler=ddim"],
    "no_discriminator": ["dmd2.gan_generator_weight=0"],
    "no_backward_distillation": ["student.inputs=forward_noised"],
    "no_srl": ["imagine_flash.srl_weight=0"],
}
"""The paper's ablation rows, as config overrides of the full method."""


def variant_configs(config_path: Path, overrides: list[str], output: Path) -> dict[str, DistillConfig]:
    """Every variant's config, all checked before any of them starts."""
    return {name: load_config(DistillConfig, config_path, [*overrides, *extra, f"output={output / name}", f"tracking.run_name={name}"]) for name, extra in VARIANTS.items()}


def main(argv: list[str] | None = None) -> list[dict] | None:
    parser = argparse.ArgumentParser(prog="python -m jobs.ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "imagine_flash.yaml")
    parser.add_argument("--output", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="override a field in every variant")
    parser.add_argument("--dry-run", action="store_true", help="check every variant's config and inputs, start nothing")
    parser.add_argument("--fresh", action="store_true", help="redo variants whose output exists")
    args = parser.parse_args(argv)
    configs = variant_configs(args.config, args.overrides, args.output)
    from orchestrator.preflight import preflight
    from orchestrator.role_group import local_nodes

    if args.fresh:
        shutil.rmtree(args.output, ignore_errors=True)
    for config in configs.values():
        preflight(config, local_nodes(), fixed_cluster=False)
    if args.dry_run:
        for name, extra in VARIANTS.items():
            print(f"{name}: {' '.join(extra) or '(the config as given)'} -> {configs[name].output}")
        print("# every variant's config and inputs OK (dry run: nothing started)")
        return None
    return run_ablation(configs, args.output)


def run_ablation(configs: dict[str, DistillConfig], output: Path) -> list[dict]:
    import mlflow

    from orchestrator.distill import distill, role_cpus
    from orchestrator.role_group import connect
    from orchestrator.student import StudentEvaluator
    from orchestrator.tracking import use_tracking_uri
    from workers.data import read_arrays

    full = configs["full"]
    connect(role_cpus(full))
    use_tracking_uri(full.tracking.tracking_uri)
    mlflow.set_experiment(full.tracking.experiment)
    timings: dict[str, float] = {}
    rows = []
    with mlflow.start_run(run_name=f"imagine-flash-ablation-{len(full.student.timesteps)}step"):
        for name, config in configs.items():
            with timed(timings, name, "ablate"):
                done = Path(config.output) / "summary.json"
                summary = json.loads(done.read_text()) if done.exists() else distill(config)
            final = summary["evaluations"][-1]
            rows.append({"variant": name, **final, "train_seconds": summary["seconds"]["total"]})
            log_row(name, final)
        steps = len(full.student.timesteps)
        evaluate = StudentEvaluator(read_arrays(full.data), full.eval_num, full.seed)
        for teacher_steps in (steps, 50):
            with timed(timings, f"teacher_{teacher_steps}", "ablate"):
                metrics = evaluate(full.teacher, teacher_steps)
            rows.append({"variant": f"teacher, {teacher_steps} DDIM steps", **metrics})
            log_row(f"teacher_{teacher_steps}steps", metrics)
        table = format_table(rows, first="variant")
        print(table)
        (output / "table.md").write_text(table + "\n")
        (output / "ablation.json").write_text(json.dumps({"rows": rows, "seconds": timings}, indent=2))
        mlflow.log_text(table + "\n", "table.md")
        mlflow.log_artifact(str(output / "ablation.json"))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return rows


def log_row(name: str, metrics: dict) -> None:
    """A table row as metrics of the ablation's MLflow run: <row>/fd, <row>/fd_mlp, <row>/class_accuracy."""
    import mlflow

    mlflow.log_metrics({f"{name}/{key}": metrics[key] for key in ("fd", "fd_mlp", "class_accuracy") if key in metrics})


if __name__ == "__main__":
    run_main(main)
