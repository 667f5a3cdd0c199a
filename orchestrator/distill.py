"""A distillation run: check inputs, start the three role groups, run the TTUR loop, export.

`run_schedule` is the loop: one `cycle` (orchestrator/cycle.py) per generator step, then logs,
evaluations and checkpoints through `Hooks`. `run_with_recovery` wraps it: a role that dies or
hangs restarts from the last checkpoint (the groups that still answer are kept). `distill` is the
whole run, tracked in MLflow.
"""

import json
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from orchestrator.config import DistillConfig
from orchestrator.config_loading import to_dict
from orchestrator.cycle import cycle, mean_metrics
from orchestrator.placement import (
    PlacementError,
    cluster_nodes,
    connect,
    is_role_failure,
    local_nodes,
    wait_out_silent_nodes,
)
from orchestrator.preflight import check_inputs, ensure_inputs, preflight
from orchestrator.progress import Progress, oscillation
from orchestrator.role_group import Roles, start_roles
from orchestrator.stopping import GracefulStop, StopRequested
from workers.errors import UserError


class NumericalError(UserError):
    """Too many updates in a row had non-finite losses or gradients."""


class RoleFailureError(UserError):
    """Role actors kept failing past fault_tolerance.max_restarts."""


class Hooks(Protocol):
    """What the loop calls out to; each call gets the live groups."""

    def on_start(self, groups: Roles) -> None:
        """The groups have started (first start and every restart)."""

    def on_log(self, groups: Roles, step: int, metrics: dict[str, float], progress: Progress) -> None:
        """Every `log_every` generator steps, with the cycle's metrics and the roles' compute seconds."""

    def on_eval(self, groups: Roles, step: int, progress: Progress) -> None:
        """Every `eval_every` generator steps."""

    def on_checkpoint(self, groups: Roles, step: int, progress: Progress) -> None:
        """Every `checkpoint_every` generator steps, unless the cycle skipped a non-finite update."""


def run_schedule(
    groups: Roles, config: DistillConfig, progress: Progress, hooks: Hooks, stop: GracefulStop | None = None
) -> Progress:
    """The TTUR loop from progress.generator_steps to config.generator_steps; `stop.requested` ends it after
    the current cycle, with a checkpoint."""
    import ray

    start = time.perf_counter() - progress.seconds
    guard = config.fault_tolerance
    while progress.generator_steps < config.generator_steps:
        step = progress.generator_steps
        # One cycle: N critic updates and a generator update.
        metrics = cycle(groups, config, step, np.random.default_rng([config.seed, step]))
        # The numerical guard: a few skipped updates pass, a run of them stops the run.
        skipped = metrics.get("generator/skipped_steps", 0.0) + metrics.get("critic/skipped_steps", 0.0) > 0
        progress.nonfinite_in_a_row = progress.nonfinite_in_a_row + 1 if skipped else 0
        progress.skipped_cycles += int(skipped)
        if progress.nonfinite_in_a_row >= guard.max_nonfinite_in_a_row:
            raise NumericalError(
                f"{progress.nonfinite_in_a_row} cycles in a row (up to generator step {step + 1}) had non-finite "
                f"losses "
                f"or gradients and were skipped (generator dm_loss {metrics.get('generator/dm_loss')}); lower "
                "roles.critic/generator.optimizer.learning_rate or set grad_clip, then resume from the last checkpoint "
                "(written before the trouble)"
            )
        progress.generator_steps, progress.seconds = step + 1, time.perf_counter() - start
        progress.critic_updates += int(metrics.pop("critic/updates", 0))
        progress.metrics = metrics | {"guard/skipped_cycles": float(progress.skipped_cycles)}
        done = progress.generator_steps
        # Log, evaluate, checkpoint.
        if done % config.log_every == 0 or done == config.generator_steps:
            seconds = [
                s for g in groups.all() for s in ray.get(g.call_async("take_seconds"), timeout=guard.cycle_timeout_s)
            ]
            hooks.on_log(groups, done, progress.metrics | mean_metrics(seconds), progress)
        if config.eval_every and done % config.eval_every == 0 and done < config.generator_steps:
            hooks.on_eval(groups, done, progress)
        # Never checkpoint right after a skipped update: the last good checkpoint stays the newest.
        checkpointed = not skipped and config.checkpoint_every and done % config.checkpoint_every == 0
        if checkpointed:
            hooks.on_checkpoint(groups, done, progress)
        if stop is not None and stop.requested and done < config.generator_steps:
            if not checkpointed and not skipped:
                hooks.on_checkpoint(groups, done, progress)
            raise StopRequested(done, stop.signal_name)
    return progress


def run_with_recovery(
    config: DistillConfig,
    num_train_timesteps: int,
    checkpoints: Path,
    progress: Progress,
    resume_from: Path | None,
    hooks: Hooks,
    stop: GracefulStop | None = None,
) -> tuple[Roles, Progress]:
    """Start the roles and run the loop; when a role dies or hangs, restart from the last checkpoint: the groups
    with a dead rank are started again, the others kept (all of them after a hang), and all load the checkpoint.

    Returns the live groups (for export) and the final progress, always with exactly
    config.generator_steps generator updates done.
    """
    from ray.exceptions import GetTimeoutError

    from orchestrator.checkpoint import latest_checkpoint, load_checkpoint

    restarts, run_id, first, survivors = progress.restarts, progress.mlflow_run_id, True, {}
    while True:
        groups = None
        try:
            try:
                wait = None if first else config.fault_tolerance.capacity_wait_s
                groups = start_roles(config, num_train_timesteps, wait, keep=survivors)
            except PlacementError as error:
                if first:
                    raise
                where = f"its last checkpoint is {resume_from}" if resume_from else "it had no checkpoint yet"
                raise PlacementError(
                    f"{error}; the run stopped after a role failure, and {where}: rerun the same "
                    "command once such nodes are back"
                ) from None
            first = False
            hooks.on_start(groups)
            if resume_from is not None:
                resumes = progress.resumes
                progress = load_checkpoint(groups, resume_from, config.fault_tolerance.cycle_timeout_s)
                progress.resumes = resumes + [progress.generator_steps]
                print(f"resumed from {resume_from} at generator step {progress.generator_steps}", flush=True)
            progress.restarts, progress.mlflow_run_id = restarts, run_id
            return groups, run_schedule(groups, config, progress, hooks, stop)
        except Exception as error:
            running = groups.all() if groups is not None else list(survivors.values())
            failed = is_role_failure(error)
            restarts += failed
            limit = config.fault_tolerance.max_restarts
            if not failed or restarts > limit:
                for group in running:
                    group.shutdown()
                if not failed:
                    raise
                raise RoleFailureError(
                    f"a role failed {restarts} times, more than fault_tolerance.max_restarts={limit} "
                    f"(last: {type(error).__name__}: {str(error).splitlines()[0][:200]}); check the nodes, then rerun "
                    "with the same --output to resume"
                ) from None
            resume_from = latest_checkpoint(checkpoints)
            where = f"checkpoint {resume_from.name}" if resume_from else "the start (no checkpoint yet)"
            print(f"role failure ({type(error).__name__}); restart {restarts}/{limit} from {where}", flush=True)
            wait_out_silent_nodes(config.fault_tolerance.capacity_wait_s)
            # Groups whose ranks all still answer are kept and roll back to the checkpoint with the new ones: a
            # critic's crash does not reload the teacher. A hang, or no checkpoint to roll back to, restarts all.
            keep = resume_from is not None and not isinstance(error, GetTimeoutError)
            survivors = {group.name: group for group in running if keep and group.answers(30.0)}
            for group in running:
                if group.name not in survivors:
                    group.shutdown()
            if survivors:
                print(f"kept the {' and '.join(survivors)} group(s): every rank still answers", flush=True)
            if resume_from is None:
                progress = Progress()


def method_name(config: DistillConfig) -> str:
    """dmd2, imagine-flash, or both joined: the losses this run trains with (run names, model manifests)."""
    losses = (("dmd2", config.dmd2.dm_weight > 0), ("imagine-flash", config.imagine_flash.srl_weight > 0))
    return "+".join(name for name, on in losses if on) or "gan"


def default_run_name(config: DistillConfig) -> str:
    """The method and step count, e.g. dmd2-1step: what a run is called unless tracking.run_name says otherwise."""
    return f"{method_name(config)}-{len(config.student.timesteps)}step"


def role_cpus(config: DistillConfig) -> float:
    """Logical CPUs the three role groups reserve, plus one for the driver's Ray Data work."""
    roles = config.roles
    return sum(r.ranks * r.cpus_per_rank for r in (roles.teacher, roles.critic, roles.generator)) + 1


class RunHooks:
    """A distillation's hooks: progress lines and MLflow metrics, evaluations of the exported student, checkpoints."""

    def __init__(
        self, config: DistillConfig, teacher, logger, evaluator, checkpoints: Path, on_evaluation=None, on_step=None
    ):
        from orchestrator.run_metrics import RunMetrics

        self.config, self.teacher, self.logger, self.evaluator = config, teacher, logger, evaluator
        self.checkpoints, self.on_evaluation, self.on_step = checkpoints, on_evaluation, on_step
        self.wall_start, self.setup_seconds = time.perf_counter(), []
        self.live = RunMetrics(Path(config.output).name, config.generator_steps)  # Prometheus / Grafana

    def export(self, groups: Roles, path: Path) -> Path:
        """The student as a model folder: the generator's weights (their EMA when kept), the teacher's architecture."""
        import ray

        from workers.models.export import export_student
        from workers.models.pipelines import LoraSetup

        student, timeout = self.config.student, self.config.fault_tolerance.cycle_timeout_s
        weights = ray.get(groups.generator.call_async("state"), timeout=timeout)[0]
        lora = LoraSetup.of(student.lora_rank, student.lora_alpha)
        return export_student(
            weights, self.teacher, student.timesteps, student.sampler, path, method_name(self.config), lora
        )

    def on_start(self, groups: Roles) -> None:
        self.setup_seconds.append(time.perf_counter() - self.wall_start)
        if len(self.setup_seconds) > 1:
            self.live.restarted()

    def on_log(self, groups: Roles, step: int, metrics: dict[str, float], progress: Progress) -> None:
        total = self.config.generator_steps
        rate = step / max(progress.seconds, 1e-9)
        fd = f"  fd {progress.evaluations[-1]['fd']:.2f}" if progress.evaluations else ""
        losses = "".join(
            f"{name} {metrics[f'generator/{name}_loss']:.4f}  "
            for name in ("dm", "srl", "gan")
            if f"generator/{name}_loss" in metrics
        )
        print(
            f"step {step}/{total}  {losses}mean {metrics.get('generator/sample_mean', 0):+.3f} "
            f"std {metrics.get('generator/sample_std', 0):.3f}  {rate:.2f} steps/s  eta "
            f"{(total - step) / rate:.0f}s{fd}",
            flush=True,
        )
        self.logger.log(metrics | {"generator/steps_per_second": rate, "restarts": float(progress.restarts)}, step)
        self.live.log(step, metrics, progress)
        if self.on_step:
            self.on_step(step)
        if "generator/sample_mean" in metrics:
            progress.sample_means.append(metrics["generator/sample_mean"])

    def on_eval(self, groups: Roles, step: int, progress: Progress) -> None:
        metrics = self.evaluator(self.export(groups, Path(self.config.output).resolve() / "eval" / "student"))
        progress.evaluations.append({"step": step, **metrics})
        self.logger.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        self.live.evaluated(metrics)
        if self.on_evaluation:
            self.on_evaluation(step, metrics)

    def on_checkpoint(self, groups: Roles, step: int, progress: Progress) -> None:
        from orchestrator.checkpoint import save_checkpoint

        config = self.config
        # Metrics up to a checkpoint reach MLflow before it exists: a killed driver's rerun continues the curve
        # from there, with no gap.
        self.logger.flush()
        save_checkpoint(
            groups,
            self.checkpoints,
            progress,
            keep=config.checkpoint_keep,
            timeout_s=config.fault_tolerance.cycle_timeout_s,
        )


def distill(config: DistillConfig, on_evaluation=None, on_step=None) -> dict:
    """Run a distillation end to end; returns the summary also written to OUTPUT/summary.json.

    `on_evaluation(step, metrics)` is called after every FD evaluation, the final one included (a
    Tune trial reports them to its scheduler); `on_step(step)` after every log (the fault drill watches it)."""
    import mlflow
    import ray

    from orchestrator.checkpoint import read_progress
    from orchestrator.report import training_curves
    from orchestrator.tracking import redact, run_params, use_tracking_uri
    from workers.evaluation.students import student_evaluator
    from workers.metric_logger import MetricLogger
    from workers.models.folders import load_model_folder

    # Check everything, then reserve: one cluster sized for every role, before the teacher may be made. A
    # local cluster takes seconds to start, so a run that will start one is checked against it beforehand.
    starts_local = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if starts_local:
        resume_from = preflight(config, local_nodes(), may_grow=False)
    connect(role_cpus(config))
    if not starts_local:
        resume_from = preflight(config, cluster_nodes(), may_grow=config.cluster_autoscales)
    if ensure_inputs(config):
        check_inputs(config)  # a teacher made just now is checked too
    output = Path(config.output).resolve()
    progress = read_progress(resume_from) if resume_from else Progress()
    output.mkdir(parents=True, exist_ok=True)
    teacher = load_model_folder(config.teacher)
    uri = use_tracking_uri(config.tracking.tracking_uri)
    mlflow.set_experiment(config.tracking.experiment)
    evaluator = student_evaluator(teacher, config.data, config.eval_data, config.eval_num, config.seed)

    # A resumed run continues its MLflow run: one run id per distillation, however often it restarts.
    # Inside a caller's run (an ablation, a sweep) the distillation is a nested run.
    run_name = None if progress.mlflow_run_id else config.tracking.run_name or default_run_name(config)
    parent = None if progress.mlflow_run_id else config.tracking.parent_run_id
    with mlflow.start_run(
        run_id=progress.mlflow_run_id, run_name=run_name, nested=mlflow.active_run() is not None, parent_run_id=parent
    ) as run:
        if progress.mlflow_run_id is None:
            mlflow.log_params(run_params(to_dict(config), uri))
            mlflow.log_dict(to_dict(config), "config.yaml")  # the resolved config, whole, as a file to rerun from
        progress.mlflow_run_id = run.info.run_id
        print(f"distill: MLflow run {run.info.run_id} at {redact(uri)}", flush=True)
        hooks = RunHooks(
            config,
            teacher,
            MetricLogger(run.info.run_id, uri),
            evaluator,
            output / "checkpoints",
            on_evaluation,
            on_step,
        )

        # Train, until done or asked to stop.
        try:
            with GracefulStop(config.fault_tolerance.stop_timeout_s) as stop:
                groups, progress = run_with_recovery(
                    config,
                    teacher.schedule.num_train_timesteps,
                    output / "checkpoints",
                    progress,
                    resume_from,
                    hooks,
                    stop,
                )
        except StopRequested as stopped:
            hooks.logger.flush()
            mlflow.set_tag("stopped_at_generator_step", stopped.step)
            mlflow.end_run("KILLED")  # a rerun of the same command continues this run from the checkpoint
            print(f"distill: {stopped}", flush=True)
            raise
        # Export, evaluate, record.
        student = hooks.export(groups, output / "student")
        placement = {group.name: group.node_ids for group in groups.all()}
        groups.shutdown()
        final = evaluator(student) | {"sample_mean_oscillation": oscillation(progress.sample_means)}
        progress.evaluations.append({"step": progress.generator_steps, **final})
        hooks.logger.log({f"eval/{k}": v for k, v in final.items()}, progress.generator_steps)
        hooks.live.evaluated(final)
        grid = evaluator.grid(student, output / "student_grid.png")
        hooks.logger.flush()
        mlflow.log_artifact(str(grid))
        curves = training_curves(uri, run.info.run_id, output / "training_curves.png")
        if curves:
            mlflow.log_artifact(str(curves))
        mlflow.log_artifacts(str(student), artifact_path="student")
        summary = {
            "generator_steps": progress.generator_steps,
            "target_generator_steps": config.generator_steps,
            "critic_steps": progress.generator_steps * config.dmd2.critic_updates_per_generator_update,
            "restarts": progress.restarts,
            "skipped_cycles": progress.skipped_cycles,
            "resumed_from": str(resume_from) if resume_from else None,
            "resumes": progress.resumes,
            "student_timesteps": list(config.student.timesteps),
            "placement": placement,
            "seconds": {
                "setup": hooks.setup_seconds[0],
                "schedule": progress.seconds,
                "total": time.perf_counter() - hooks.wall_start,
            },
            "final_metrics": progress.metrics,
            "evaluations": progress.evaluations,
            "mlflow_run_id": run.info.run_id,
            "student": str(student),
        }
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_artifact(str(output / "summary.json"))
    if on_evaluation:  # last, once everything is written: a scheduler may stop the trial on this report
        on_evaluation(progress.generator_steps, final)
    return summary
