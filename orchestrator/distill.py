"""A DMD2 distillation run: check inputs, start the three role groups, run the TTUR loop, export.

The loop (`run_schedule`) owns the two time-scale schedule: N critic updates on fresh generator
samples, then one generator update whose DM and GAN gradients come from the teacher and critic
groups. Tensors travel between groups as object refs; the driver only sees small metric dicts.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.config import DistillConfig
from orchestrator.config_loading import flatten, to_dict
from orchestrator.role_group import RoleGroup, assign, connect, shard_count
from workers.errors import ConfigError


@dataclass
class Roles:
    teacher: RoleGroup
    critic: RoleGroup
    generator: RoleGroup

    def all(self) -> list[RoleGroup]:
        return [self.teacher, self.critic, self.generator]


@dataclass
class Progress:
    generator_steps: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)


def check_inputs(config: DistillConfig):
    """Everything that can be checked before an actor starts: teacher folder, data, their agreement."""
    from workers.data import read_info
    from workers.models import check_model_folder

    manifest = check_model_folder(config.teacher)
    if manifest.kind != "teacher":
        raise ConfigError(f"teacher: {config.teacher} holds a {manifest.kind}, not a teacher; point at a folder written by jobs.train_teacher")
    info = read_info(config.data) if config.dmd2.gan_generator_weight > 0 else None
    unet_config = json.loads((Path(config.teacher) / "unet" / "config.json").read_text())
    shape = (unet_config["in_channels"], unet_config["sample_size"], unet_config["sample_size"])
    if info is not None and info.image_shape != shape:
        raise ConfigError(f"data: {config.data} holds images of shape {list(info.image_shape)}, the teacher makes {list(shape)}; use the teacher's data set")
    if max(config.dmd2.timesteps) >= json.loads((Path(config.teacher) / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"]:
        raise ConfigError(f"dmd2.timesteps: {config.dmd2.timesteps} must be below the teacher's num_train_timesteps")
    return manifest, info


def start_roles(config: DistillConfig, num_train_timesteps: int) -> Roles:
    """Start the teacher, critic and generator groups and load their models."""
    import ray

    from workers.critic import Critic
    from workers.data import ray_dataset
    from workers.generator import Generator
    from workers.teacher import Teacher

    roles, d = config.roles, config.dmd2
    groups = Roles(RoleGroup("teacher", Teacher, roles.teacher, config.seed), RoleGroup("critic", Critic, roles.critic, config.seed), RoleGroup("generator", Generator, roles.generator, config.seed))
    gan = d.gan_generator_weight > 0
    splits = ray_dataset(config.data).materialize().streaming_split(roles.critic.ranks, equal=True) if gan else [None] * roles.critic.ranks
    generator_setup, critic_setup = role_setups(config, num_train_timesteps)
    teacher = str(Path(config.teacher).resolve())
    ray.get(
        groups.teacher.call_async("setup", teacher, d.guidance_scale)
        + [actor.setup.remote(teacher, critic_setup, split) for actor, split in zip(groups.critic.actors, splits)]
        + groups.generator.call_async("setup", teacher, generator_setup)
    )
    return groups


def role_setups(config: DistillConfig, num_train_timesteps: int):
    """What the generator and critic need to know, per rank."""
    from workers.critic import CriticSetup
    from workers.generator import GeneratorSetup

    roles, d = config.roles, config.dmd2
    generator_setup = GeneratorSetup(
        timesteps=list(d.timesteps), micro_batch=config.batch_size // roles.generator.ranks,
        dm_t_min=int(d.dm_t_min * num_train_timesteps), dm_t_max=min(int(d.dm_t_max * num_train_timesteps), num_train_timesteps - 1),
        dm_weight=d.dm_weight, gan_weight=d.gan_generator_weight, optimizer=roles.generator.optimizer, sharding=roles.generator.sharding,
    )
    critic_setup = CriticSetup(config.batch_size // roles.critic.ranks, d.gan_discriminator_weight, d.gan_generator_weight, roles.critic.optimizer, roles.critic.sharding)
    return generator_setup, critic_setup


def generate(groups: Roles, request) -> list:
    """Ask every generator rank for samples; returns one ref per shard, in rank order."""
    per_rank = request.shards
    refs = []
    for actor in groups.generator.actors:
        out = actor.generate.options(num_returns=per_rank).remote(request)
        refs += out if per_rank > 1 else [out]
    return refs


def cycle(groups: Roles, config: DistillConfig, step: int, rng: np.random.Generator) -> dict[str, float]:
    """One TTUR cycle: N critic updates, then one generator update. Returns the cycle's metrics."""
    import ray

    from workers.messages import GenerateRequest

    shards = shard_count(*groups.all())
    per_generator_rank = shards // groups.generator.ranks
    steps = len(config.dmd2.timesteps)
    draw_k = lambda: int(rng.integers(steps)) if config.dmd2.backward_simulation else 0  # noqa: E731

    # Critic updates on fresh samples. The generator's weights are fixed until its update, so all N
    # requests go out at once and the actors' queues pipeline them: equal to the plain schedule.
    critic_refs = []
    for i in range(config.dmd2.critic_updates_per_generator_update):
        seed = step * 1000 + i
        fakes = generate(groups, GenerateRequest(seed, draw_k(), keep_graph=False, shards=per_generator_rank))
        critic_refs += [actor.train_step.remote(seed, *own) for actor, own in zip(groups.critic.actors, assign(fakes, groups.critic.ranks))]

    # Generator update: samples with graph; teacher and critic answer per shard, in parallel.
    fakes = generate(groups, GenerateRequest(step * 1000 + 999, draw_k(), keep_graph=True, shards=per_generator_rank))
    teacher_x0 = [groups.teacher.actors[i * groups.teacher.ranks // len(fakes)].x0.remote(f) for i, f in enumerate(fakes)]
    feedback = [groups.critic.actors[i * groups.critic.ranks // len(fakes)].feedback.remote(f) for i, f in enumerate(fakes)]
    generator_refs = [
        actor.update.remote(per_generator_rank, *own_x0, *own_feedback)
        for actor, own_x0, own_feedback in zip(groups.generator.actors, assign(teacher_x0, groups.generator.ranks), assign(feedback, groups.generator.ranks))
    ]
    results = ray.get(generator_refs + critic_refs)
    return mean_metrics(results)


def mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in results for k in r}
    return {k: float(np.mean([r[k] for r in results if k in r])) for k in sorted(keys)}


def run_schedule(groups: Roles, config: DistillConfig, progress: Progress, on_log, on_eval, on_checkpoint) -> Progress:
    """The TTUR loop from progress.generator_steps to config.generator_steps."""
    import ray

    start = time.perf_counter() - progress.seconds
    while progress.generator_steps < config.generator_steps:
        step = progress.generator_steps
        metrics = cycle(groups, config, step, np.random.default_rng([config.seed, step]))
        progress.generator_steps, progress.seconds = step + 1, time.perf_counter() - start
        progress.metrics = metrics
        done = progress.generator_steps
        if done % config.log_every == 0 or done == config.generator_steps:
            role_seconds = mean_metrics([s for g in groups.all() for s in ray.get(g.call_async("take_seconds"))])
            on_log(done, metrics | role_seconds, progress)
        if config.eval_every and done % config.eval_every == 0 and done < config.generator_steps:
            on_eval(done, progress)
        if config.checkpoint_every and done % config.checkpoint_every == 0:
            on_checkpoint(done, progress)
    return progress


def role_cpus(config: DistillConfig) -> float:
    """Logical CPUs the three role groups reserve, plus one for the driver's Ray Data work."""
    roles = config.roles
    return sum(r.ranks * r.cpus_per_rank for r in (roles.teacher, roles.critic, roles.generator)) + 1


def ensure_teacher(config: DistillConfig) -> None:
    """Make the teacher on first use when a recipe is given (the tiny smoke config does this)."""
    if Path(config.teacher).exists() or config.teacher_recipe is None:
        return
    from orchestrator.config import TeacherTrainingConfig
    from orchestrator.config_loading import load_config
    from orchestrator.teacher_training import train_teacher

    if not Path(config.data).exists():
        from workers.data import digits_arrays, write_shards

        print(f"data {config.data} does not exist yet: writing the bundled digits there", flush=True)
        write_shards(digits_arrays(), config.data)
    recipe = load_config(TeacherTrainingConfig, config.teacher_recipe, [f"output={config.teacher}", f"data={config.data}"])
    print(f"teacher {config.teacher} does not exist yet: training it from {config.teacher_recipe}", flush=True)
    train_teacher(recipe)


def distill(config: DistillConfig) -> dict:
    """Run a distillation end to end; returns the summary also written to OUTPUT/summary.json."""
    import mlflow
    import ray

    from orchestrator.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from orchestrator.student import StudentEvaluator, export_student
    from orchestrator.tracking import MetricLogger, redact, tracking_uri
    from workers.data import digits_arrays, read_arrays
    from workers.images import save_grid
    from workers.inference import sample_from_folder
    from workers.models import load_model_folder

    connect(role_cpus(config))  # before the teacher may be made: one cluster sized for every role
    ensure_teacher(config)
    manifest, _ = check_inputs(config)
    output = Path(config.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    teacher = load_model_folder(config.teacher)
    uri = tracking_uri(config.tracking.tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.tracking.experiment)

    reference = read_arrays(config.data) if Path(config.data).exists() else digits_arrays()
    evaluator = StudentEvaluator(reference, config.eval_num, config.seed)
    wall_start = time.perf_counter()
    with mlflow.start_run(run_name=f"dmd2-{len(config.dmd2.timesteps)}step") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(to_dict(config)).items()})
        logger = MetricLogger(run.info.run_id, uri)
        print(f"distill: MLflow run {run.info.run_id} at {redact(uri)}", flush=True)
        groups = start_roles(config, teacher.schedule.num_train_timesteps)
        setup_seconds = time.perf_counter() - wall_start
        checkpoint = latest_checkpoint(output / "checkpoints")
        progress = load_checkpoint(groups, checkpoint) if checkpoint else Progress()

        def export(path: Path) -> Path:
            return export_student(ray.get(groups.generator.actors[0].state.remote()), teacher, config.dmd2.timesteps, path)

        def on_log(step: int, metrics: dict, p: Progress) -> None:
            rate = step / max(p.seconds, 1e-9)
            fd = f"  fd {p.evaluations[-1]['fd']:.2f}" if p.evaluations else ""
            print(f"step {step}/{config.generator_steps}  dm {metrics.get('generator/dm_loss', 0):.4f}  gan {metrics.get('generator/gan_loss', 0):.3f}  "
                  f"mean {metrics.get('generator/sample_mean', 0):+.3f} std {metrics.get('generator/sample_std', 0):.3f}  "
                  f"{rate:.2f} steps/s  eta {(config.generator_steps - step) / rate:.0f}s{fd}", flush=True)
            logger.log(metrics | {"generator/steps_per_second": rate}, step)

        def on_eval(step: int, p: Progress) -> None:
            metrics = evaluator(export(output / "eval" / "student"))
            p.evaluations.append({"step": step, **metrics})
            logger.log({f"eval/{k}": v for k, v in metrics.items()}, step)

        def on_checkpoint(step: int, p: Progress) -> None:
            save_checkpoint(groups, output / "checkpoints", p)

        progress = run_schedule(groups, config, progress, on_log, on_eval, on_checkpoint)
        student = export(output / "student")
        for group in groups.all():
            group.shutdown()
        final = evaluator(student)
        progress.evaluations.append({"step": progress.generator_steps, **final})
        logger.log({f"eval/{k}": v for k, v in final.items()}, progress.generator_steps)
        grid = save_grid(sample_from_folder(student, None, 100, config.seed).images, output / "student_grid.png")
        logger.flush()
        mlflow.log_artifact(str(grid))
        mlflow.log_artifacts(str(student), artifact_path="student")
        summary = {
            "generator_steps": progress.generator_steps,
            "target_generator_steps": config.generator_steps,
            "critic_steps": progress.generator_steps * config.dmd2.critic_updates_per_generator_update,
            "student_timesteps": list(config.dmd2.timesteps),
            "seconds": {"setup": setup_seconds, "schedule": progress.seconds, "total": time.perf_counter() - wall_start},
            "final_metrics": progress.metrics,
            "evaluations": progress.evaluations,
            "mlflow_run_id": run.info.run_id,
            "student": str(student),
        }
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        mlflow.log_artifact(str(output / "summary.json"))
    return summary
