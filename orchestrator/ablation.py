"""An ablation suite: every variant of a method distilled with several training seeds, and one table.

    OUTPUT/<variant>/seed-<S>/   each distillation's run folder (student/, summary.json)
    OUTPUT/table.md, ablation.json

A variant changes one thing of its base. Its row is the mean and spread (std over seeds) of its final
evaluation, and a sentence says whether the paper's direction holds here, where the FD gap to its
base exceeds both rows' spread. Finished runs (their summary.json) are kept, so a suite resumes where
it stopped and can span several sittings.
"""

import json
import time
from pathlib import Path

import numpy as np

from orchestrator.config import AblationConfig, AblationVariant, DistillConfig
from orchestrator.config_loading import load_config
from orchestrator.report import format_table, timed

METRICS = ("fd", "fd_mlp", "fd_pixels", "precision", "recall", "class_accuracy")


def variant_overrides(config: AblationConfig, name: str) -> list[str]:
    """A variant's overrides: its base's (recursively), then its own."""
    variant = config.variants[name]
    return (variant_overrides(config, variant.base) if variant.base else []) + variant.overrides


def run_configs(
    config: AblationConfig, output: Path, overrides: list[str] = ()
) -> dict[tuple[str, int], DistillConfig]:
    """Every run's config, by (variant, seed), all checked before any of them starts."""
    return {
        (name, seed): load_config(
            DistillConfig,
            config.distill_config,
            [
                *config.overrides,
                *overrides,
                *variant_overrides(config, name),
                f"seed={seed}",
                f"output={output / name / f'seed-{seed}'}",
                f"tracking.run_name={name}-seed{seed}",
            ],
        )
        for name in config.variants
        for seed in config.seeds
    }


def summarise(name: str, variant: AblationVariant, finals: list[dict]) -> dict:
    """A variant's row: each metric's mean over seeds, and the FD's spread."""
    row = {"variant": variant.title or name, "name": name, "seeds": len(finals)}
    for key in METRICS:
        values = [f[key] for f in finals if f.get(key) is not None]
        if values:
            row[key] = float(np.mean(values))
    row["fd_std"] = float(np.std([f["fd"] for f in finals])) if len(finals) > 1 else None
    row["train_seconds"] = float(np.mean([f["train_seconds"] for f in finals]))
    return row


def verdict(row: dict, base: dict, variant: AblationVariant) -> str:
    """Whether the paper's direction holds here: only where the FD gap exceeds both rows' spread."""
    gap, spread = row["fd"] - base["fd"], max(row.get("fd_std") or 0.0, base.get("fd_std") or 0.0)
    against = f"FD {row['fd']:.2f} against {base['fd']:.2f} for {base['variant']}"
    if abs(gap) <= spread:
        return f"{against}: the gap is within the spread (±{spread:.2f}), no conclusion"
    direction = "worse" if gap > 0 else "better"
    holds = direction == variant.expected
    claim = f"the paper's direction ({variant.expected}: {variant.paper}) {'holds' if holds else 'does not hold'} here"
    return f"{against}, {direction} beyond the spread (±{spread:.2f}): {claim}"


def run_ablation(config: AblationConfig, configs: dict[tuple[str, int], DistillConfig], output: Path) -> list[dict]:
    """Run every (variant, seed) whose summary is missing, then the table; returns its rows."""
    import mlflow

    from orchestrator.distill import distill, role_cpus
    from orchestrator.placement import connect
    from orchestrator.tracking import use_tracking_uri
    from workers.evaluation.students import student_evaluator
    from workers.models.folders import load_model_folder

    first = next(iter(configs.values()))
    connect(max(role_cpus(c) for c in configs.values()))
    use_tracking_uri(first.tracking.tracking_uri)
    mlflow.set_experiment(first.tracking.experiment)
    timings: dict[str, float] = {}
    finals: dict[str, list[dict]] = {name: [] for name in config.variants}
    with mlflow.start_run(run_name=f"ablation-{Path(config.distill_config).stem}"):
        for index, ((name, seed), run) in enumerate(configs.items()):
            done = Path(run.output) / "summary.json"
            with timed(timings, f"{name}/seed-{seed}", f"ablate {index + 1}/{len(configs)}"):
                summary = json.loads(done.read_text()) if done.exists() else distill(run)
            finals[name].append({**summary["evaluations"][-1], "train_seconds": summary["seconds"]["total"]})
        rows = {name: summarise(name, variant, finals[name]) for name, variant in config.variants.items()}
        for name, variant in config.variants.items():
            if variant.base and variant.expected:
                rows[name]["verdict"] = verdict(rows[name], rows[variant.base], variant)
        evaluate = student_evaluator(
            load_model_folder(first.teacher), first.data, first.eval_data, first.eval_num, first.seed
        )
        teacher_rows = [
            {"variant": f"teacher, {steps} DDIM steps", **evaluate(first.teacher, steps)}
            for steps in config.teacher_steps
        ]
        table = format_table([*rows.values(), *teacher_rows], first="variant")
        sentences = [f"- **{row['variant']}**: {row['verdict']}" for row in rows.values() if row.get("verdict")]
        report = table + ("\n\n" + "\n".join(sentences) if sentences else "")
        print(report, flush=True)
        output.mkdir(parents=True, exist_ok=True)
        (output / "table.md").write_text(report + "\n")
        record = {"rows": [*rows.values(), *teacher_rows], "seconds": timings, "finished": time.time()}
        (output / "ablation.json").write_text(json.dumps(record, indent=2))
        mlflow.log_text(report + "\n", "table.md")
        mlflow.log_artifact(str(output / "ablation.json"))
        for row in rows.values():
            mlflow.log_metrics(
                {f"{row['name']}/{key}": row[key] for key in ("fd", "recall", "class_accuracy") if key in row}
            )
    return [*rows.values(), *teacher_rows]
