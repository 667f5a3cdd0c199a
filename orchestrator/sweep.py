"""A Ray Tune sweep whose trials are whole role-group distillations.

Each trial reserves, through a `PlacementGroupFactory`, a bundle for its driver, one for its Ray
Data work and one per rank of every role (`role_group.trial_bundles`); `start_roles` places the
roles into those bundles, so Tune runs as many trials at once as the cluster holds. Trials report
FD at every evaluation to an ASHA scheduler, which stops the worst early (`early_stopping=False`
runs every trial to the end, as an ablation needs). The sweep is a parent MLflow run; each trial's
distillation is a run nested under it.

A search space is YAML mapping config paths to one domain each:

    dmd2.critic_updates_per_generator_update: {choice: [1, 2, 5, 10]}
    roles.generator.optimizer.learning_rate: {loguniform: [1.0e-5, 1.0e-4]}
"""

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config
from workers.errors import ConfigError, UserError

DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")
RANKED_COLUMNS = ("fd", "recall", "class_accuracy", "sample_mean_oscillation", "generator_steps")


class SweepError(UserError):
    """No trial of a sweep finished."""


@dataclass
class SweepSpec:
    """What every trial shares: the base config and overrides, the space, where results go."""

    config_path: Path
    overrides: list[str]
    space: dict[str, dict]
    output: Path
    num_samples: int
    early_stopping: bool = True
    """ASHA stops trials whose FD trails at an evaluation; False runs every trial to generator_steps."""


def load_space(path: Path) -> dict[str, dict]:
    """The search space from YAML; every domain checked here, every path checked by `check_space`."""
    if not Path(path).is_file():
        raise ConfigError(
            f"--space {path} does not exist: pass a YAML file of config paths to domains (see "
            f"jobs/configs/sweep_space.yaml)"
        )
    space = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"--space {path}: needs a mapping of config paths to domains, e.g. 'dmd2.dm_weight: {{choice: [0.5, 1.0]}}'"
        )
    for key, domain in space.items():
        if not (isinstance(domain, dict) and len(domain) == 1 and next(iter(domain)) in DOMAINS):
            raise ConfigError(
                f"--space {path}: {key}: {domain!r} must be one of {{{', '.join(DOMAINS)}: ...}}, e.g. "
                f"{{choice: [1, 2]}}"
            )
        kind, args = next(iter(domain.items()))
        if kind in ("choice", "grid") and not (isinstance(args, list) and args):
            raise ConfigError(f"--space {path}: {key}: {kind} needs a non-empty list of values")
        if kind in ("uniform", "loguniform", "randint") and not (
            isinstance(args, list) and len(args) == 2 and args[0] < args[1]
        ):
            raise ConfigError(f"--space {path}: {key}: {kind} needs [low, high] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"--space {path}: {key}: loguniform needs a positive low bound")
    return space


def as_override(key: str, value) -> str:
    """`key=value` in the YAML form `--set` parses back to the same value (1e-05 becomes 1.0e-05)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).removesuffix(chr(10)).removesuffix(chr(10) + '...')}"


def corner_values(domain: dict) -> list:
    kind, args = next(iter(domain.items()))
    return list(args) if kind in ("choice", "grid") else [args[0], args[1] - 1 if kind == "randint" else args[1]]


def trial_config(spec: SweepSpec, params: dict, output: Path, extra: list[str] = ()) -> DistillConfig:
    return load_config(
        DistillConfig,
        spec.config_path,
        [*spec.overrides, *(as_override(k, v) for k, v in params.items()), f"output={output}", *extra],
    )


def check_space(spec: SweepSpec) -> DistillConfig:
    """Every value at the edges of the space makes a valid config (a bad path or value fails here,
    before Tune starts); returns the config of the first corner, for resources and the scheduler."""
    first = {key: corner_values(domain)[0] for key, domain in spec.space.items()}
    for key, domain in spec.space.items():
        for value in corner_values(domain):
            try:
                trial_config(spec, first | {key: value}, spec.output / "check")
            except ConfigError as error:
                raise ConfigError(f"search space {key}={value!r}: {error}") from None
    return trial_config(spec, first, spec.output / "check")


PATH_FIELDS = ("teacher", "teacher_recipe", "data", "generator_init")


def with_absolute_paths(spec: SweepSpec, base: DistillConfig) -> SweepSpec:
    """Tune runs each trial in a working directory of its own: relative paths are pinned to where
    the sweep started (measured: without this every trial failed to find jobs/configs/)."""
    pinned = [f"{name}={Path(value).resolve()}" for name in PATH_FIELDS if (value := getattr(base, name)) is not None]
    return replace(
        spec, config_path=spec.config_path.resolve(), overrides=[*spec.overrides, *pinned], output=spec.output.resolve()
    )


def tune_space(space: dict[str, dict]) -> dict:
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: make[kind](args) for key, domain in space.items() for kind, args in domain.items()}


def run_trial(params: dict, spec: SweepSpec, parent_run_id: str, tracking_uri: str) -> None:
    """One Tune trial: a full distillation into OUTPUT/trials/<trial id>, reporting FD as it goes."""
    from ray import tune

    from orchestrator.distill import default_run_name, distill

    # The driver's store, whatever a reused worker process has in its environment (where it would win).
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(
        spec,
        params,
        spec.output / "trials" / trial_id,
        [f"tracking.parent_run_id={parent_run_id}", f"tracking.tracking_uri={tracking_uri}"],
    )
    config.tracking.run_name = f"{default_run_name(config)}-{trial_id}"

    def report(step: int, metrics: dict) -> None:
        tune.report({"generator_steps": step, **{k: float(v) for k, v in metrics.items() if v is not None}})

    distill(config, on_evaluation=report)


def ranked_rows(results) -> list[dict]:
    """One row per trial, best FD first: its parameters, last reported metrics, status."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        rows.append(
            {
                "trial": metrics.get("trial_id", Path(result.path).name),
                **{k: result.config.get(k) for k in sorted(result.config)},
                **{k: metrics.get(k) for k in RANKED_COLUMNS},
                "status": "error" if result.error else "done" if metrics.get("done") else "stopped",
            }
        )
    return sorted(rows, key=lambda r: (r["fd"] is None, r["fd"] if r["fd"] is not None else 0.0))


def format_rows(rows: list[dict]) -> str:
    columns = list(rows[0]) if rows else []
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(
        ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        + ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    )


def trial_scheduler(base: DistillConfig, early_stopping: bool):
    """ASHA over generator steps (first rung at the first evaluation, halving); without early stopping Tune's FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not early_stopping:
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="generator_steps",
        max_t=base.generator_steps,
        grace_period=base.eval_every or base.generator_steps,
        reduction_factor=2,
    )


def sweep(spec: SweepSpec) -> list[dict]:
    """Run the sweep; writes OUTPUT/results.md and .json, and the best student to OUTPUT/best/student."""
    import mlflow
    from ray import tune

    from orchestrator.placement import cluster_nodes, connect, trial_bundles
    from orchestrator.preflight import ensure_inputs, preflight
    from orchestrator.tracking import use_tracking_uri

    base = check_space(spec)
    spec = with_absolute_paths(spec, base)
    bundles = trial_bundles(base.roles)
    started_local = connect(sum(b.get("CPU", 0) for b in bundles))
    preflight(base, cluster_nodes(), may_grow=not started_local and base.cluster_autoscales)
    ensure_inputs(base)  # once here, not once per trial
    uri = use_tracking_uri(base.tracking.tracking_uri)
    mlflow.set_experiment(base.tracking.experiment)
    output = spec.output
    output.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(run_name=f"sweep-{output.name}") as parent:
        mlflow.log_params(
            {
                "sweep.num_samples": spec.num_samples,
                "sweep.early_stopping": spec.early_stopping,
                **{f"sweep.space.{k}": json.dumps(v) for k, v in spec.space.items()},
            }
        )
        trainable = tune.with_parameters(run_trial, spec=spec, parent_run_id=parent.info.run_id, tracking_uri=uri)
        tuner = tune.Tuner(
            tune.with_resources(trainable, tune.PlacementGroupFactory(bundles)),
            param_space=tune_space(spec.space),
            tune_config=tune.TuneConfig(
                metric="fd",
                mode="min",
                scheduler=trial_scheduler(base, spec.early_stopping),
                num_samples=spec.num_samples,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(output), verbose=1),
        )
        results = tuner.fit()
        rows = ranked_rows(results)
        table = format_rows(rows)
        (output / "results.md").write_text(table + "\n")
        (output / "results.json").write_text(json.dumps(rows, indent=2))
        mlflow.log_artifact(str(output / "results.md"))
        best = next(
            (r for r in rows if r["fd"] is not None and (output / "trials" / r["trial"] / "student").is_dir()), None
        )
        if best is not None:
            shutil.rmtree(output / "best", ignore_errors=True)
            shutil.copytree(output / "trials" / best["trial"] / "student", output / "best" / "student")
            mlflow.log_metric("best_fd", best["fd"])
    print(table)
    if all(r["status"] == "error" for r in rows):
        first = next(iter(results)).error
        raise SweepError(
            f"every trial failed (first: {type(first).__name__}: {str(first).strip().splitlines()[-1][:300]}); see "
            f"{output / 'tune'}"
        )
    print(f"best student: {output / 'best' / 'student' if best else 'none (no trial finished)'}")
    return rows
