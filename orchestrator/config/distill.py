"""A distillation: the roles, the student, DMD2, Imagine Flash, fault tolerance and the run itself."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.config.common import OptimizerConfig, ShardingConfig, TrackingConfig
from orchestrator.config_loading import require


@dataclass
class RoleConfig:
    """Where one role's ranks run and how its DeepSpeed world shards it."""

    ranks: int = 1
    """Data-parallel ranks (actors) in this role's own DeepSpeed world."""
    cpus_per_rank: float = 1.0
    """Logical CPUs each rank reserves."""
    gpus_per_rank: float = 0.0
    """GPUs each rank reserves (0 on CPU machines)."""
    node_resource: str | None = None
    """A custom resource the role's nodes carry (cluster.yaml: inference_gpu, train_gpu); each rank takes 0.01 of it."""
    threads_per_rank: int = 2
    """torch intra-op threads per rank."""
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Ignored for the frozen teacher."""

    def check(self, where: str = "") -> None:
        require(self.ranks >= 1, f"{where}.ranks", f"{self.ranks} must be at least 1")
        require(self.cpus_per_rank >= 0, f"{where}.cpus_per_rank", f"{self.cpus_per_rank} must not be negative")
        require(self.gpus_per_rank >= 0, f"{where}.gpus_per_rank", f"{self.gpus_per_rank} must not be negative")
        require(self.threads_per_rank >= 1, f"{where}.threads_per_rank", f"{self.threads_per_rank} must be at least 1")
        require(
            self.node_resource is None or self.node_resource.strip() != "",
            f"{where}.node_resource",
            "is empty; name a custom resource (e.g. train_gpu) or leave it unset",
        )


@dataclass
class RolesConfig:
    """The three role groups."""

    teacher: RoleConfig = field(default_factory=RoleConfig)
    critic: RoleConfig = field(default_factory=RoleConfig)
    generator: RoleConfig = field(default_factory=RoleConfig)


StudentInputs = Literal["backward_simulated", "forward_noised"]
StudentSampler = Literal["lcm", "ddim", "noise_corrected_ddim"]


@dataclass
class StudentConfig:
    """The few-step student: where it samples, what it trains on, how it moves between its timesteps."""

    timesteps: list[int] = field(default_factory=lambda: [999])
    """The student's timesteps, high to low: [999] one step; [999, 749, 499, 249] four steps."""
    inputs: StudentInputs = "backward_simulated"
    """What the student trains on at its timestep t_k. backward_simulated: its own k sampler steps from
    pure noise, without gradient (DMD2's backward simulation, Imagine Flash's backward distillation);
    forward_noised: real images noised to t_k (the ablation both papers report)."""
    sampler: StudentSampler = "lcm"
    """lcm: x0 re-noised with fresh noise (DMD2); ddim: deterministic DDIM; noise_corrected_ddim: DDIM whose
    first step uses the initial noise instead of the predicted one (Imagine Flash). Used in backward
    simulation and saved as the student's scheduler."""
    step_weights: list[float] | None = None
    """How often each student step is trained, relative (one weight per timestep); unset: all equally (DMD2)."""
    lora_rank: int = 0
    """> 0: train the generator as a LoRA of this rank on the UNet's attention projections (SD 1.5 / SDXL
    teachers); the student is exported with the LoRA fused in, and as LoRA weights in student/lora."""
    lora_alpha: float = 0.0
    """The LoRA's alpha (its update is scaled by alpha / rank); 0: equal to lora_rank."""
    ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the generator's weights (decay per generator update);
    the average is what is evaluated and exported. 0: the trained weights themselves (DMD2's release)."""

    def check(self, where: str = "") -> None:
        require(
            self.lora_rank >= 0,
            f"{where}.lora_rank",
            f"{self.lora_rank} must be 0 (train the whole UNet) or a LoRA rank, e.g. 8",
        )
        require(self.lora_alpha >= 0, f"{where}.lora_alpha", f"{self.lora_alpha} must be 0 (alpha = rank) or positive")
        require(
            0 <= self.ema_decay < 1,
            f"{where}.ema_decay",
            f"{self.ema_decay} must be 0 (no average) or in (0, 1), e.g. 0.95",
        )
        ts = self.timesteps
        require(len(ts) >= 1, f"{where}.timesteps", "needs at least one timestep, e.g. [999]")
        require(
            all(a > b for a, b in zip(ts, ts[1:])),
            f"{where}.timesteps",
            f"{ts} must be strictly decreasing, e.g. [999, 749, 499, 249]",
        )
        require(
            min(ts) >= 0,
            f"{where}.timesteps",
            f"{ts} holds a negative timestep; use teacher training timesteps 0 .. T-1",
        )
        w = self.step_weights
        require(
            w is None or (len(w) == len(ts) and min(w) >= 0 and sum(w) > 0),
            f"{where}.step_weights",
            f"{w} needs one non-negative weight per timestep of {ts}, not all 0, e.g. {[1] * len(ts)}",
        )
        require(
            self.sampler == "lcm" or len(ts) > 1,
            f"{where}.sampler",
            f"{self.sampler} changes only how the student moves between timesteps, and {ts} has one; "
            "use lcm or give several timesteps",
        )


@dataclass
class Dmd2Config:
    """DMD2 (Yin et al. 2024): the distribution-matching loss, two time-scale updates and the GAN."""

    critic_updates_per_generator_update: int = 5
    """TTUR ratio N: critic updates per generator update (5 for ImageNet-64 and SDXL, 10 for SD 1.5)."""
    last_critic_update: Literal["before_generator", "with_generator"] = "with_generator"
    """with_generator (DMD2's release order): the N-th critic update of a cycle trains on the generator's own
    update batch while the generator updates, off the cycle's critical path; the generator's feedback comes
    from the critic after the other N - 1. before_generator: all N train on fresh samples before the
    generator's update, and its feedback comes from the critic after all N."""
    dm_t_min: float = 0.02
    """DM loss timesteps are drawn from UniformInt[dm_t_min * T, dm_t_max * T]."""
    dm_t_max: float = 0.98
    """See dm_t_min."""
    dm_timesteps: Literal["full", "below_input"] = "full"
    """full: every student step draws its DM loss timesteps from the whole range (DMD2). below_input: each
    step after the first draws them no higher than its own input's timestep t_k, so a later step only
    matches the detail its input leaves open (as Phased DMD's subintervals); the first step keeps the whole range."""
    guidance_scale: float = 1.0
    """The teacher's classifier-free guidance in the DM loss (1: none; 0: unconditional)."""
    dm_weight: float = 1.0
    """Weight of the DM loss in the generator's loss (0 turns it off)."""
    gan_generator_weight: float = 3e-3
    """Weight of the generator's GAN loss (0: no GAN, no real data needed). Imagine Flash's discriminator is
    this same head."""
    gan_discriminator_weight: float = 1e-2
    """Weight of the discriminator loss in the critic's loss."""

    def check(self, where: str = "") -> None:
        n = self.critic_updates_per_generator_update
        require(n >= 1, f"{where}.critic_updates_per_generator_update", f"{n} must be at least 1 (DMD2 used 5)")
        require(
            self.guidance_scale >= 0,
            f"{where}.guidance_scale",
            f"{self.guidance_scale} must not be negative (1: no guidance)",
        )
        require(
            0 <= self.dm_t_min < self.dm_t_max <= 1,
            f"{where}.dm_t_min",
            f"need 0 <= dm_t_min < dm_t_max <= 1, got {self.dm_t_min} and {self.dm_t_max}",
        )
        for name in ("dm_weight", "gan_generator_weight", "gan_discriminator_weight"):
            require(
                getattr(self, name) >= 0,
                f"{where}.{name}",
                f"{getattr(self, name)} must not be negative (0 turns that loss off)",
            )


@dataclass
class ImagineFlashConfig:
    """Imagine Flash (Kohler et al. 2024): the shifted reconstruction loss (SRL). Its backward distillation is
    student.inputs, its noise correction student.sampler, its discriminator the dmd2 GAN head."""

    srl_weight: float = 0.0
    """Weight of the SRL in the generator's loss (0: off)."""
    gamma_scale: float = 1.0
    """gamma(t) = clip(gamma_scale * t + gamma_shift + U{-gamma_jitter..gamma_jitter}, 0, T-1): the teacher
    timestep the student's x0 is re-noised to; increasing in t (high t: structure, low t: detail)."""
    gamma_shift: float = 0.0
    """See gamma_scale."""
    gamma_jitter: int = 0
    """See gamma_scale."""
    srl_teacher_steps: int = 1
    """k: DDIM steps the teacher takes from gamma(t) down to its x0 target."""
    srl_guidance_scale: float = 1.0
    """The teacher's classifier-free guidance while making the SRL target (1: none)."""

    def check(self, where: str = "") -> None:
        require(
            self.srl_weight >= 0, f"{where}.srl_weight", f"{self.srl_weight} must not be negative (0 turns the SRL off)"
        )
        require(
            self.gamma_scale > 0,
            f"{where}.gamma_scale",
            f"{self.gamma_scale} must be positive: gamma(t) has to increase with t",
        )
        require(
            self.gamma_jitter >= 0,
            f"{where}.gamma_jitter",
            f"{self.gamma_jitter} must be 0 (none) or a positive number of timesteps",
        )
        require(
            1 <= self.srl_teacher_steps <= 50,
            f"{where}.srl_teacher_steps",
            f"{self.srl_teacher_steps} must be 1 to 50 teacher steps",
        )
        require(
            self.srl_guidance_scale >= 0,
            f"{where}.srl_guidance_scale",
            f"{self.srl_guidance_scale} must not be negative (1: no guidance)",
        )


@dataclass
class FaultToleranceConfig:
    """What a run survives: role actors dying, hangs, and non-finite numbers."""

    max_restarts: int = 3
    """Times the run restarts from the last checkpoint after a role fails (the groups with a dead rank start
    again, the others are kept and roll back); one more failure ends the run."""
    cycle_timeout_s: float = 600.0
    """A TTUR cycle (or checkpoint, evaluation) taking longer than this counts as a role failure: a hang never
    goes unnoticed."""
    max_nonfinite_in_a_row: int = 5
    """Cycles in a row with a skipped non-finite update before the run stops with an error."""
    capacity_wait_s: float = 600.0
    """After a failure (a lost node, preempted ranks), how long the restart waits for a node that stopped
    answering to be declared dead, and for nodes with the roles' resources to come back; past it the run stops
    with its last checkpoint and an error naming the role."""
    stop_timeout_s: float = 120.0
    """After SIGTERM (`ray job stop`, a node being reclaimed) the run finishes its cycle, checkpoints and closes
    its MLflow run as KILLED; past this many seconds it exits without that checkpoint (the last one stays).
    `ray job stop` waits RAY_JOB_STOP_WAIT_TIME_S (3 s by default) before it kills: give the job more."""

    def check(self, where: str = "") -> None:
        require(
            self.max_restarts >= 0,
            f"{where}.max_restarts",
            f"{self.max_restarts} must be 0 (fail on the first role failure) or more",
        )
        require(
            self.cycle_timeout_s > 0,
            f"{where}.cycle_timeout_s",
            f"{self.cycle_timeout_s} must be positive seconds, e.g. 600",
        )
        require(
            self.max_nonfinite_in_a_row >= 1,
            f"{where}.max_nonfinite_in_a_row",
            f"{self.max_nonfinite_in_a_row} must be at least 1",
        )
        require(
            self.stop_timeout_s > 0,
            f"{where}.stop_timeout_s",
            f"{self.stop_timeout_s} must be positive seconds, e.g. 120",
        )


@dataclass
class DistillConfig:
    """A distillation run: teacher folder, real data, the method, the roles and the schedule."""

    teacher: Path = Path("runs/demo/teacher")
    """The teacher's model folder (jobs.train_teacher writes one)."""
    teacher_recipe: Path | None = None
    """A teacher-training YAML used to make the teacher on first use when `teacher` does not exist yet."""
    data: Path = Path("runs/data/digits")
    """Parquet data set of real images (the GAN's real side)."""
    eval_data: Path | None = None
    """Held-out real images the evaluation compares with (a test split); unset: `data`, with the yardstick
    trained on a split of it."""
    generator_init: Path | None = None
    """A student folder (of this teacher's architecture) the generator starts from; unset: the teacher's weights."""
    output: Path = Path("runs/distill")
    """Where the student, checkpoints and summary.json go (the --output flag sets it)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    dmd2: Dmd2Config = field(default_factory=Dmd2Config)
    imagine_flash: ImagineFlashConfig = field(default_factory=ImagineFlashConfig)
    roles: RolesConfig = field(default_factory=RolesConfig)
    generator_steps: int = 300
    """Generator updates to run (the critic runs N times as many)."""
    batch_size: int = 128
    """Global batch per update, split over each role's ranks."""
    seed: int = 0
    """Seeds every role's noise, labels and timesteps, and the data order."""
    log_every: int = 10
    """Generator steps between metric logs and progress lines."""
    eval_every: int = 100
    """Generator steps between FD evaluations (0: only at the end)."""
    eval_num: int = 1000
    """Samples per FD evaluation."""
    checkpoint_every: int = 100
    """Generator steps between checkpoints (0: none); a failed role restarts from the last one."""
    checkpoint_keep: int = 3
    """Complete checkpoints kept; older ones are deleted."""
    resume: str = "auto"
    """auto: continue from the latest complete checkpoint in OUTPUT/checkpoints, if any (same MLflow run);
    never: start fresh, refusing an output that holds checkpoints; or the path of one checkpoint folder."""
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    placement_timeout_s: float = 60.0
    """How long a role group may wait for its placement group before the run stops with an error naming the role."""
    cluster_autoscales: bool = False
    """The cluster adds nodes on demand (Ray autoscaler, KubeRay): roles that do not fit the nodes there now are
    waited for, up to placement_timeout_s; unset: such a run stops at once with an error naming the shortfall."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self, where: str = "") -> None:
        require(
            self.placement_timeout_s > 0,
            "placement_timeout_s",
            f"{self.placement_timeout_s} must be positive seconds, e.g. 60",
        )
        require(self.generator_steps >= 1, "generator_steps", f"{self.generator_steps} must be at least 1")
        require(self.batch_size >= 1, "batch_size", f"{self.batch_size} must be at least 1")
        require(self.seed >= 0, "seed", f"{self.seed} must not be negative")
        require(self.log_every >= 1, "log_every", f"{self.log_every} must be at least 1")
        require(
            self.eval_every >= 0 and self.checkpoint_every >= 0,
            "eval_every",
            f"eval_every={self.eval_every} and checkpoint_every={self.checkpoint_every} must be 0 (off) or positive",
        )
        require(self.checkpoint_keep >= 1, "checkpoint_keep", f"{self.checkpoint_keep} must be at least 1")
        require(
            self.resume in ("auto", "never") or Path(self.resume).name.startswith("step-"),
            "resume",
            f"{self.resume!r} must be auto, never, or a checkpoint folder OUTPUT/checkpoints/step-NNNNNN",
        )
        for name in ("teacher", "critic", "generator"):
            ranks = getattr(self.roles, name).ranks
            require(
                self.batch_size % ranks == 0,
                "batch_size",
                f"{self.batch_size} must be divisible by roles.{name}.ranks={ranks}",
            )
        require(self.eval_num >= 10, "eval_num", f"{self.eval_num} must be at least 10")
        d, srl = self.dmd2, self.imagine_flash
        require(
            d.dm_weight > 0 or d.gan_generator_weight > 0 or srl.srl_weight > 0,
            "dmd2.dm_weight",
            "dmd2.dm_weight, dmd2.gan_generator_weight and imagine_flash.srl_weight are all 0: the generator would "
            "learn nothing; turn one on",
        )
        stage = self.roles.teacher.sharding.zero_stage
        require(
            stage in (0, 3),
            "roles.teacher.sharding.zero_stage",
            f"{stage}: the frozen teacher has no optimizer state or gradients to shard; use 0 (replicated) or 3 "
            "(parameters sharded)",
        )
