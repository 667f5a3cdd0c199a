"""A benchmark run: data, the teacher, every student, and one table of them all on the same yardstick.

    OUTPUT/teacher/              the teacher (trained once, reused while its recipe is unchanged)
    OUTPUT/<student>/            each student's model folder (jobs.sample loads it)
    OUTPUT/runs/<student>/       each distillation's run folder (checkpoints, summary.json)
    OUTPUT/teacher_rows.json     the teacher's rows, kept for the next run of the same teacher
    OUTPUT/table.md, results.json, grids/<row>.png

Every step whose output exists is reused, so a stopped benchmark continues where it stopped.
"""

import hashlib
import json
import shutil
import time
from pathlib import Path

from orchestrator.config import BenchmarkConfig, DistillConfig, TeacherTrainingConfig
from orchestrator.config_loading import load_config
from orchestrator.report import BENCHMARK_COLUMNS, format_table
from workers.errors import ConfigError


def prepare_data(config: BenchmarkConfig) -> None:
    """Write the data set's train/ and test/ shards unless they are there (Fashion-MNIST from its IDX files)."""
    from workers.data.shards import read_info, write_shards
    from workers.data.sources import fashion_mnist_arrays

    for split in ("train", "test"):
        folder = Path(config.data) / split
        if folder.is_dir() and any(folder.glob("part-*.parquet")):
            read_info(folder)  # a damaged data set fails here, with the command that rewrites it
            continue
        print(f"[benchmark] writing {config.source} {split} to {folder}", flush=True)
        write_shards(fashion_mnist_arrays(split), folder)


def teacher_config(config: BenchmarkConfig, output: Path) -> TeacherTrainingConfig:
    overrides = [*config.teacher_overrides, f"output={output / 'teacher'}", f"data={Path(config.data) / 'train'}"]
    return load_config(TeacherTrainingConfig, config.teacher_recipe, overrides)


def ensure_teacher(config: BenchmarkConfig, output: Path) -> Path:
    """OUTPUT/teacher, trained (or finished) unless it is there with the same recipe."""
    from orchestrator.teacher_trainer import recipe, train_teacher, training_record

    recipe_config = teacher_config(config, output)
    teacher = Path(recipe_config.output)
    if teacher.exists():
        record = training_record(teacher)
        if record is None or record["recipe"] != recipe(recipe_config):
            raise ConfigError(
                f"{teacher} holds a teacher of another recipe than {config.teacher_recipe}: delete it to "
                "retrain, choose another --output, or pass --teacher to benchmark that teacher as it is"
            )
        print(f"[benchmark] reusing the teacher in {teacher}", flush=True)
        return teacher
    return train_teacher(recipe_config)


def student_configs(config: BenchmarkConfig, teacher: Path, output: Path) -> dict[str, DistillConfig]:
    """Every student's distillation config, all checked before any of them starts."""
    data = Path(config.data)
    common = [
        *config.distill_overrides,
        f"teacher={teacher}",
        f"data={data / 'train'}",
        f"eval_data={data / 'test'}",
        "teacher_recipe=null",
        f"seed={config.seed}",
    ]
    return {
        name: load_config(
            DistillConfig,
            config.distill_config,
            [*common, *student.overrides, f"output={output / 'runs' / name}", f"tracking.run_name={name}"],
        )
        for name, student in config.students.items()
    }


def distill_students(configs: dict[str, DistillConfig], output: Path) -> dict[str, dict]:
    """Distill every student whose folder is missing; returns each one's summary."""
    from orchestrator.distill import distill
    from workers.models.folders import MANIFEST

    summaries = {}
    for name, config in configs.items():
        folder, summary_file = output / name, Path(config.output) / "summary.json"
        if not (folder / MANIFEST).is_file():
            print(f"[benchmark] distilling {name} into {folder}", flush=True)
            summary = distill(config)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(summary["student"], folder)
        summaries[name] = json.loads(summary_file.read_text())
    return summaries


def weights_fingerprint(model: Path) -> str:
    """A short hash of a model folder's weights: the key of its cached table rows."""
    digest = hashlib.sha1()
    for file in sorted(Path(model).rglob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def evaluate_rows(config: BenchmarkConfig, teacher: Path, students: dict[str, dict], output: Path) -> list[dict]:
    """The table: the real-data floor, the teacher's rows (cached per teacher), then every student."""
    from tqdm import tqdm

    from orchestrator.teacher_trainer import training_record
    from workers.data.shards import read_arrays
    from workers.evaluation.quality import real_data_row
    from workers.evaluation.students import StudentEvaluator

    data = Path(config.data)
    train, test = read_arrays(data / "train"), read_arrays(data / "test")
    fd_sizes = tuple(config.fd_sizes)
    evaluate = StudentEvaluator(train, config.eval_num, config.seed, test=test, fd_sizes=fd_sizes, progress=True)
    record = training_record(teacher)
    rows = [
        {
            "model": f"real data ({config.source} training images)",
            "name": "real_data",
            "kind": "floor",
            **real_data_row(train, evaluate.reference, config.eval_num, config.seed, fd_sizes),
        }
    ]
    cache_file, key = (
        output / "teacher_rows.json",
        f"{weights_fingerprint(teacher)}-{config.eval_num}-{fd_sizes}-{config.seed}",
    )
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    jobs = model_rows(config, teacher, students, output)
    for title, kind, folder, steps, sampler in tqdm(jobs, desc="[benchmark] evaluating", unit="row"):
        cached = cache.get(key, {}).get(title) if kind == "teacher" else None
        metrics = cached or evaluate(folder, steps, sampler)
        if kind == "teacher":
            cache.setdefault(key, {})[title] = metrics
            cache_file.write_text(json.dumps(cache, indent=2))
            seconds = record["seconds"] if record else None
        else:
            seconds = students[kind]["seconds"]["setup"] + students[kind]["seconds"]["schedule"]  # over resumes
        name = row_name(kind, steps, sampler)
        rows.append({"model": title, "name": name, "kind": kind, **metrics, "train_seconds": seconds})
        evaluate.grid(folder, output / "grids" / f"{name}.png", steps, sampler)
    return rows


def model_rows(config: BenchmarkConfig, teacher: Path, students, output: Path) -> list[tuple]:
    """(title, kind, folder, steps, sampler) of every model row: the teacher's samplers, then each student."""
    samplers = {"ddim": "DDIM", "dpm_solver": "DPM-Solver++"}
    jobs = [
        (f"teacher, {row.steps} {samplers[row.sampler]} steps", "teacher", teacher, row.steps, row.sampler)
        for row in config.teacher_rows
    ]
    return jobs + [(config.students[name].title or name, name, output / name, None, "ddim") for name in students]


def row_name(kind: str, steps: int | None, sampler: str) -> str:
    """A row's name in its grid's file name and its MLflow metric keys: the student's key, or
    teacher_<sampler>_<steps> (titles such as "DPM-Solver++" hold characters MLflow refuses in a key)."""
    return kind if steps is None else f"{kind}_{sampler}_{steps}"


def tracked_metrics(rows: list[dict]) -> dict[str, float]:
    """The table's numbers as MLflow metrics: <row name>/<column key>, e.g. teacher_dpm_solver_4/fd."""
    keys = [key for key, *_ in BENCHMARK_COLUMNS]
    return {f"{row['name']}/{key}": row[key] for row in rows for key in keys if row.get(key) is not None}


def run_benchmark(config: BenchmarkConfig, output: Path, teacher: Path | None = None) -> list[dict]:
    """The whole benchmark; returns the table's rows (also in OUTPUT/results.json and OUTPUT/table.md)."""
    import mlflow

    from orchestrator.distill import role_cpus
    from orchestrator.placement import connect
    from orchestrator.tracking import use_tracking_uri

    output = Path(output).resolve()
    start = time.perf_counter()
    prepare_data(config)
    configs_preview = student_configs(config, teacher or output / "teacher", output)  # config errors before any work
    connect(max(role_cpus(c) for c in configs_preview.values()))
    teacher = Path(teacher) if teacher else ensure_teacher(config, output)
    students = distill_students(student_configs(config, teacher, output), output)
    rows = evaluate_rows(config, teacher, students, output)
    table = format_table(rows, columns=BENCHMARK_COLUMNS)
    print(table, flush=True)
    (output / "table.md").write_text(table + "\n")
    (output / "results.json").write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - start}, indent=2))
    use_tracking_uri(config.tracking.tracking_uri)
    mlflow.set_experiment(config.tracking.experiment)
    with mlflow.start_run(run_name=f"benchmark-{config.source}"):
        mlflow.log_text(table + "\n", "table.md")
        mlflow.log_artifact(str(output / "results.json"))
        mlflow.log_artifacts(str(output / "grids"), artifact_path="grids")
        mlflow.log_metrics(tracked_metrics(rows))
    return rows
