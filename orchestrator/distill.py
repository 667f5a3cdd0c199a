"""A DMD2 distillation run: check inputs, start the three role groups, run the TTUR loop, export.

The loop (`run_schedule`) owns the two time-scale schedule: N critic updates per generator update,
whose DM and GAN gradients come from the teacher and critic groups (`cycle`: DMD2's order, the
critic's last update overlapping the generator's). Tensors travel between groups as object refs; the driver only sees small metric dicts.
`run_with_recovery` wraps the loop: a role that dies or hangs restarts every group from the last
checkpoint.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.config import DistillConfig
from orchestrator.config_loading import to_dict
from orchestrator.preflight import check_inputs, ensure_teacher, preflight
from orchestrator.role_group import RoleGroup, assign, cluster_nodes, connect, is_role_failure, role_bundle_offsets, shard_count
from workers.errors import UserError


class NumericalError(UserError):
    """Too many updates in a row had non-finite losses or gradients."""


class RoleFailureError(UserError):
    """Role actors kept failing past fault_tolerance.max_restarts."""


@dataclass
class Roles:
    teacher: RoleGroup
    critic: RoleGroup
    generator: RoleGroup

    def all(self) -> list[RoleGroup]:
        return [self.teacher, self.critic, self.generator]

    def shutdown(self) -> None:
        for group in self.all():
            group.shutdown()


@dataclass
class Progress:
    """The schedule's state, saved with every checkpoint."""

    generator_steps: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)
    mlflow_run_id: str | None = None
    restarts: int = 0
    """Times the role groups were restarted after a failure, over the whole run."""
    sample_means: list[float] = field(default_factory=list)
    """The generated images' mean at every log: the stability signal, summarised by `oscillation`."""
    nonfinite_in_a_row: int = 0
    """Cycles in a row in which the numerical guard skipped an update."""
    skipped_cycles: int = 0


@dataclass
class Hooks:
    """What the loop calls out to: logging, evaluation and checkpoints (each gets the live groups)."""

    on_log: object
    on_eval: object
    on_checkpoint: object
    on_start: object = None
    """Called with the groups each time they have started (first start and restarts)."""


def start_roles(config: DistillConfig, num_train_timesteps: int) -> Roles:
    """Start the teacher, critic and generator groups and load their models."""
    import ray

    from workers.critic import Critic
    from workers.generator import Generator
    from workers.teacher import Teacher

    from ray.util import get_current_placement_group

    roles = config.roles
    trial = get_current_placement_group()  # inside a Tune trial: its reservation holds every role's bundles
    offsets = role_bundle_offsets(roles)
    if trial is not None:
        # Ray Data's default SPREAD strategy would wait for CPUs outside the trial's reservation
        # (measured: a sweep hung on its first read); its work goes into the trial's data bundle.
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        context = ray.data.DataContext.get_current()
        context.scheduling_strategy = context.scheduling_strategy_large_args = PlacementGroupSchedulingStrategy(trial)
    started: list[RoleGroup] = []
    try:  # a failure part-way leaves no actor or placement group behind
        for name, actor_class in (("teacher", Teacher), ("critic", Critic), ("generator", Generator)):
            reserved = (trial, offsets[name]) if trial is not None else None
            started.append(RoleGroup(name, actor_class, getattr(roles, name), config.seed, config.placement_timeout_s, run=Path(config.output).name, reserved=reserved))
        groups = Roles(*(group.join() for group in started))
        critic_data = real_data_splits(config.data, roles.critic.ranks) if config.dmd2.gan_generator_weight > 0 else [None] * roles.critic.ranks
        generator_data = real_data_splits(config.data, roles.generator.ranks) if config.student.inputs == "forward_noised" else [None] * roles.generator.ranks
        teacher_setup, critic_setup, generator_setup = role_setups(config, num_train_timesteps)
        teacher = str(Path(config.teacher).resolve())
        ray.get(
            groups.teacher.call_async("setup", teacher, teacher_setup)
            + [actor.setup.remote(teacher, critic_setup, split) for actor, split in zip(groups.critic.actors, critic_data)]
            + [actor.setup.remote(teacher, generator_setup, split) for actor, split in zip(groups.generator.actors, generator_data)],
            timeout=config.fault_tolerance.cycle_timeout_s,
        )
        return groups
    except BaseException:
        for group in started:
            group.shutdown()
        raise


def real_data_splits(path: Path, ranks: int) -> list:
    """One Ray Data iterator per critic rank, in a fixed order so a resumed run sees the same stream."""
    from workers.data import ray_dataset

    return ray_dataset(path).materialize().streaming_split(ranks, equal=True)


def role_setups(config: DistillConfig, num_train_timesteps: int):
    """What the teacher, critic and generator need to know, per rank."""
    from workers.critic import CriticSetup
    from workers.generator import GeneratorSetup
    from workers.conditioning import PROMPT_TABLE
    from workers.models import layout_of
    from workers.pipelines import LoraSetup
    from workers.teacher import TeacherSetup

    roles, d, srl, student = config.roles, config.dmd2, config.imagine_flash, config.student
    # A text-to-image teacher's labels index the data set's prompts, whose embeddings every role reads from one table.
    prompts = None if layout_of(config.teacher) == "pixels" else str((Path(config.data) / PROMPT_TABLE).resolve())
    teacher_setup = TeacherSetup(
        guidance_scale=d.guidance_scale, dm=d.dm_weight > 0, srl=srl.srl_weight > 0, gamma_scale=srl.gamma_scale, gamma_shift=srl.gamma_shift,
        gamma_jitter=srl.gamma_jitter, srl_teacher_steps=srl.srl_teacher_steps, srl_guidance_scale=srl.srl_guidance_scale,
        sharding=roles.teacher.sharding, prompts=prompts,
    )
    critic_setup = CriticSetup(config.batch_size // roles.critic.ranks, d.gan_discriminator_weight, d.gan_generator_weight, roles.critic.optimizer, roles.critic.sharding,
                               dm_loss=d.dm_weight > 0, prompts=prompts)
    generator_setup = GeneratorSetup(
        timesteps=list(student.timesteps), inputs=student.inputs, sampler=student.sampler, micro_batch=config.batch_size // roles.generator.ranks,
        dm_t_min=int(d.dm_t_min * num_train_timesteps), dm_t_max=min(int(d.dm_t_max * num_train_timesteps), num_train_timesteps - 1),
        dm_below_input=d.dm_timesteps == "below_input",
        dm_weight=d.dm_weight, gan_weight=d.gan_generator_weight, srl_weight=srl.srl_weight,
        optimizer=roles.generator.optimizer, sharding=roles.generator.sharding,
        init_from=str(Path(config.generator_init).resolve()) if config.generator_init else None, prompts=prompts,
        lora=LoraSetup.of(student.lora_rank, student.lora_alpha), ema_decay=student.ema_decay,
    )
    return teacher_setup, critic_setup, generator_setup


def oscillation(values: list[float]) -> float | None:
    """Standard deviation of the step-to-step changes of a logged series (0 for a steady or
    smoothly drifting one): how much the generated mean swings between logs."""
    return float(np.std(np.diff(values))) if len(values) > 2 else None


def generate(groups: Roles, request) -> list:
    """Ask every generator rank for samples; returns one ref per shard, in rank order."""
    per_rank = request.shards
    refs = []
    for actor in groups.generator.actors:
        out = actor.generate.options(num_returns=per_rank).remote(request)
        refs += out if per_rank > 1 else [out]
    return refs


def draw_student_step(rng: np.random.Generator, steps: int, weights: list[float] | None = None) -> int:
    """k, the student step a generator call trains (or feeds the critic): uniform (DMD2), or by `weights`."""
    if weights is None:
        return int(rng.integers(steps))
    return int(rng.choice(steps, p=np.asarray(weights, dtype=float) / sum(weights)))


@dataclass
class CycleSeeds:
    """The sampling seeds of one TTUR cycle, in the order its updates are queued."""

    fresh: list[int]
    """Critic updates on fresh samples, before the generator's update."""
    generator: int
    """The generator's update batch."""
    beside_generator: int | None
    """The critic update on the generator's own batch, beside its update (with_generator); None: before_generator."""


def cycle_seeds(config: DistillConfig, step: int) -> CycleSeeds:
    """Which critic updates of cycle `step` train on fresh samples and which beside the generator's."""
    beside = config.dmd2.last_critic_update == "with_generator"
    fresh = [step * 1000 + i for i in range(config.dmd2.critic_updates_per_generator_update - beside)]
    return CycleSeeds(fresh, step * 1000 + 999, step * 1000 + 998 if beside else None)


def cycle(groups: Roles, config: DistillConfig, step: int, rng: np.random.Generator) -> dict[str, float]:
    """One TTUR cycle: N critic updates and one generator update. DMD2's release order (the default,
    dmd2.last_critic_update=with_generator): N - 1 critic updates on fresh samples, the generator's update
    against that critic, and the N-th critic update on the generator's own batch at the same time as the
    generator's; before_generator: all N first. Returns the cycle's metrics."""
    import ray

    from workers.messages import GenerateRequest

    shards = shard_count(*groups.all())
    per_generator_rank = shards // groups.generator.ranks
    draw_k = lambda: draw_student_step(rng, len(config.student.timesteps), config.student.step_weights)  # noqa: E731

    def train_critic(seed: int, fakes: list) -> list:
        return [actor.train_step.remote(seed, *own) for actor, own in zip(groups.critic.actors, assign(fakes, groups.critic.ranks))]

    # Critic updates on fresh samples. The generator's weights are fixed until its update, so all
    # requests go out at once and the actors' queues pipeline them: equal to the plain schedule.
    seeds = cycle_seeds(config, step)
    critic_refs = []
    for seed in seeds.fresh:
        critic_refs += train_critic(seed, generate(groups, GenerateRequest(seed, draw_k(), keep_graph=False, shards=per_generator_rank)))

    # Generator update: samples with graph; teacher and critic answer per shard, in parallel.
    fakes = generate(groups, GenerateRequest(seeds.generator, draw_k(), keep_graph=True, shards=per_generator_rank))
    teacher_answers = [groups.teacher.actors[i * groups.teacher.ranks // len(fakes)].answer.remote(f) for i, f in enumerate(fakes)]
    feedback = [groups.critic.actors[i * groups.critic.ranks // len(fakes)].feedback.remote(f) for i, f in enumerate(fakes)]
    generator_refs = [
        actor.update.remote(per_generator_rank, *own_answers, *own_feedback)
        for actor, own_answers, own_feedback in zip(groups.generator.actors, assign(teacher_answers, groups.generator.ranks), assign(feedback, groups.generator.ranks))
    ]
    if seeds.beside_generator is not None:  # queued behind its feedback, it runs while the generator updates: off the critical path
        critic_refs += train_critic(seeds.beside_generator, fakes)
    results = ray.get(generator_refs + critic_refs, timeout=config.fault_tolerance.cycle_timeout_s)
    return mean_metrics(results)


def mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in results for k in r}
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in sorted(keys)}


def run_schedule(groups: Roles, config: DistillConfig, progress: Progress, hooks: Hooks) -> Progress:
    """The TTUR loop from progress.generator_steps to config.generator_steps."""
    import ray

    start = time.perf_counter() - progress.seconds
    guard = config.fault_tolerance
    while progress.generator_steps < config.generator_steps:
        step = progress.generator_steps
        metrics = cycle(groups, config, step, np.random.default_rng([config.seed, step]))
        skipped = metrics.get("generator/skipped_steps", 0.0) + metrics.get("critic/skipped_steps", 0.0) > 0
        progress.nonfinite_in_a_row = progress.nonfinite_in_a_row + 1 if skipped else 0
        progress.skipped_cycles += int(skipped)
        if progress.nonfinite_in_a_row >= guard.max_nonfinite_in_a_row:
            raise NumericalError(
                f"{progress.nonfinite_in_a_row} cycles in a row (up to generator step {step + 1}) had non-finite losses or gradients and were skipped "
                f"(generator dm_loss {metrics.get('generator/dm_loss')}); lower roles.critic/generator.optimizer.learning_rate or set grad_clip, "
                "then resume from the last checkpoint (written before the trouble)"
            )
        progress.generator_steps, progress.seconds = step + 1, time.perf_counter() - start
        progress.metrics = metrics | {"guard/skipped_cycles": float(progress.skipped_cycles)}
        done = progress.generator_steps
        if done % config.log_every == 0 or done == config.generator_steps:
            role_seconds = mean_metrics([s for g in groups.all() for s in ray.get(g.call_async("take_seconds"), timeout=guard.cycle_timeout_s)])
            hooks.on_log(groups, done, progress.metrics | role_seconds, progress)
        if config.eval_every and done % config.eval_every == 0 and done < config.generator_steps:
            hooks.on_eval(groups, done, progress)
        # Never checkpoint right after a skipped update: the last good checkpoint stays the newest.
        if config.checkpoint_every and done % config.checkpoint_every == 0 and not skipped:
            hooks.on_checkpoint(groups, done, progress)
    return progress


def run_with_recovery(config: DistillConfig, num_train_timesteps: int, checkpoints: Path, progress: Progress, resume_from: Path | None, hooks: Hooks) -> tuple[Roles, Progress]:
    """Start the roles and run the loop; when a role dies or hangs, tear down and restart from the last checkpoint.

    Returns the live groups (for export) and the final progress, always with exactly
    config.generator_steps generator updates done.
    """
    from orchestrator.checkpoint import latest_checkpoint, load_checkpoint

    restarts, run_id = progress.restarts, progress.mlflow_run_id
    while True:
        groups = None
        try:
            groups = start_roles(config, num_train_timesteps)
            if hooks.on_start:
                hooks.on_start(groups)
            if resume_from is not None:
                progress = load_checkpoint(groups, resume_from, config.fault_tolerance.cycle_timeout_s)
                print(f"resumed from {resume_from} at generator step {progress.generator_steps}", flush=True)
            progress.restarts, progress.mlflow_run_id = restarts, run_id
            return groups, run_schedule(groups, config, progress, hooks)
        except Exception as error:
            if groups is not None:
                groups.shutdown()
            if not is_role_failure(error):
                raise
            restarts += 1
            if restarts > config.fault_tolerance.max_restarts:
                raise RoleFailureError(
                    f"a role failed {restarts} times, more than fault_tolerance.max_restarts={config.fault_tolerance.max_restarts} "
                    f"(last: {type(error).__name__}: {str(error).splitlines()[0][:200]}); check the nodes, then rerun with the same --output to resume"
                ) from None
            resume_from = latest_checkpoint(checkpoints)
            where = f"checkpoint {resume_from.name}" if resume_from else "the start (no checkpoint yet)"
            print(f"role failure ({type(error).__name__}); restart {restarts}/{config.fault_tolerance.max_restarts} from {where}", flush=True)
            if resume_from is None:
                progress = Progress()


def method_name(config: DistillConfig) -> str:
    """dmd2, imagine-flash, or both joined: the losses this run trains with (run names, model manifests)."""
    parts = [name for name, on in (("dmd2", config.dmd2.dm_weight > 0), ("imagine-flash", config.imagine_flash.srl_weight > 0)) if on]
    return "+".join(parts) or "gan"


def default_run_name(config: DistillConfig) -> str:
    """The method and step count, e.g. dmd2-1step: what a run is called unless tracking.run_name says otherwise."""
    return f"{method_name(config)}-{len(config.student.timesteps)}step"


def role_cpus(config: DistillConfig) -> float:
    """Logical CPUs the three role groups reserve, plus one for the driver's Ray Data work."""
    roles = config.roles
    return sum(r.ranks * r.cpus_per_rank for r in (roles.teacher, roles.critic, roles.generator)) + 1


def distill(config: DistillConfig, on_evaluation=None) -> dict:
    """Run a distillation end to end; returns the summary also written to OUTPUT/summary.json.

    `on_evaluation(step, metrics)` is called after every FD evaluation, the final one included (a
    Tune trial reports them to its scheduler)."""
    import mlflow
    import ray

    from orchestrator.checkpoint import read_progress, save_checkpoint
    from orchestrator.student import export_student, student_evaluator
    from orchestrator.tracking import MetricLogger, redact, run_params, use_tracking_uri
    from workers.models import load_model_folder

    started_local = connect(role_cpus(config))  # before the teacher may be made: one cluster sized for every role
    resume_from = preflight(config, cluster_nodes(), fixed_cluster=started_local)
    if ensure_teacher(config):
        check_inputs(config)  # a teacher made just now is checked too
    output = Path(config.output).resolve()
    checkpoints = output / "checkpoints"
    progress = read_progress(resume_from) if resume_from else Progress()
    output.mkdir(parents=True, exist_ok=True)
    teacher = load_model_folder(config.teacher)
    uri = use_tracking_uri(config.tracking.tracking_uri)
    mlflow.set_experiment(config.tracking.experiment)

    evaluator = student_evaluator(teacher, config.data, config.eval_num, config.seed)
    timeout = config.fault_tolerance.cycle_timeout_s
    wall_start = time.perf_counter()
    # A resumed run continues its MLflow run: one run id per distillation, however often it restarts.
    # Inside a caller's run (an ablation, a sweep) the distillation is a nested run.
    run_name = None if progress.mlflow_run_id else config.tracking.run_name or default_run_name(config)
    parent = None if progress.mlflow_run_id else config.tracking.parent_run_id
    with mlflow.start_run(run_id=progress.mlflow_run_id, run_name=run_name, nested=mlflow.active_run() is not None, parent_run_id=parent) as run:
        if progress.mlflow_run_id is None:
            mlflow.log_params(run_params(to_dict(config), uri))
            mlflow.log_dict(to_dict(config), "config.yaml")  # the resolved config, whole, as a file to rerun from
        progress.mlflow_run_id = run.info.run_id
        logger = MetricLogger(run.info.run_id, uri)
        print(f"distill: MLflow run {run.info.run_id} at {redact(uri)}", flush=True)

        def export(groups: Roles, path: Path) -> Path:
            return export_student(ray.get(groups.generator.call_async("state"), timeout=timeout)[0], teacher, config.student, path, method_name(config))

        def on_log(groups: Roles, step: int, metrics: dict, p: Progress) -> None:
            rate = step / max(p.seconds, 1e-9)
            fd = f"  fd {p.evaluations[-1]['fd']:.2f}" if p.evaluations else ""
            losses = "".join(f"{name} {metrics[f'generator/{name}_loss']:.4f}  " for name in ("dm", "srl", "gan") if f"generator/{name}_loss" in metrics)
            print(f"step {step}/{config.generator_steps}  {losses}"
                  f"mean {metrics.get('generator/sample_mean', 0):+.3f} std {metrics.get('generator/sample_std', 0):.3f}  "
                  f"{rate:.2f} steps/s  eta {(config.generator_steps - step) / rate:.0f}s{fd}", flush=True)
            logger.log(metrics | {"generator/steps_per_second": rate, "restarts": float(p.restarts)}, step)
            if "generator/sample_mean" in metrics:
                p.sample_means.append(metrics["generator/sample_mean"])

        def on_eval(groups: Roles, step: int, p: Progress) -> None:
            metrics = evaluator(export(groups, output / "eval" / "student"))
            p.evaluations.append({"step": step, **metrics})
            logger.log({f"eval/{k}": v for k, v in metrics.items()}, step)
            if on_evaluation:
                on_evaluation(step, metrics)

        def on_checkpoint(groups: Roles, step: int, p: Progress) -> None:
            save_checkpoint(groups, checkpoints, p, keep=config.checkpoint_keep, timeout_s=timeout)

        setup_seconds: list[float] = []

        def on_start(groups: Roles) -> None:
            setup_seconds.append(time.perf_counter() - wall_start)

        hooks = Hooks(on_log, on_eval, on_checkpoint, on_start)
        groups, progress = run_with_recovery(config, teacher.schedule.num_train_timesteps, checkpoints, progress, resume_from, hooks)
        student = export(groups, output / "student")
        placement = {group.name: group.node_ids for group in groups.all()}
        groups.shutdown()
        final = evaluator(student) | {"sample_mean_oscillation": oscillation(progress.sample_means)}
        progress.evaluations.append({"step": progress.generator_steps, **final})
        logger.log({f"eval/{k}": v for k, v in final.items()}, progress.generator_steps)
        grid = evaluator.grid(student, output / "student_grid.png")
        logger.flush()
        mlflow.log_artifact(str(grid))
        mlflow.log_artifacts(str(student), artifact_path="student")
        summary = {
            "generator_steps": progress.generator_steps,
            "target_generator_steps": config.generator_steps,
            "critic_steps": progress.generator_steps * config.dmd2.critic_updates_per_generator_update,
            "restarts": progress.restarts,
            "skipped_cycles": progress.skipped_cycles,
            "resumed_from": str(resume_from) if resume_from else None,
            "student_timesteps": list(config.student.timesteps),
            "placement": placement,
            "seconds": {"setup": setup_seconds[0], "schedule": progress.seconds, "total": time.perf_counter() - wall_start},
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
