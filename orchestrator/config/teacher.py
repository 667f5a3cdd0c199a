"""Training a teacher."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.config.common import OptimizerConfig, ScheduleConfig, ShardingConfig, TrackingConfig, UNetConfig
from orchestrator.config_loading import require


@dataclass
class TeacherTrainingConfig:
    """Training a class-conditional diffusion teacher with Ray Train and DeepSpeed."""

    data: Path = Path("runs/data/digits")
    """Parquet data set folder written by jobs.prepare_data."""
    output: Path = Path("runs/demo/teacher")
    """Where the teacher's model folder is written (its checkpoints go to OUTPUT.checkpoints)."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-3, warmup_steps=100, grad_clip=1.0)
    )
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 128
    """Global batch size, split evenly over the workers."""
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"
    """uniform: every noise level weighs the same (DDPM); min_snr: Min-SNR-gamma weights (Hang et al. 2023),
    which keep the easy low-noise levels from dominating and train several times faster."""
    snr_gamma: float = 5.0
    """gamma of min_snr."""
    label_dropout: float = 0.1
    """Fraction of labels replaced by the null label, so the teacher also learns the unconditional score (CFG)."""
    ema_decay: float = 0.999
    """Decay of the weights' exponential moving average; the EMA is what is saved."""
    ema_warmup: bool = True
    """Warm the EMA's decay up as diffusers' EMAModel does, min(ema_decay, (1 + n) / (10 + n)) at update n, so the
    saved teacher keeps nothing of its random initial weights."""
    guidance_scale: float = 1.0
    """Classifier-free guidance the saved teacher samples with by default (1: none)."""
    seed: int = 0
    """Seeds weights, noise and data order."""
    num_workers: int = 1
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: int = 1
    """Logical CPUs each worker reserves; keep one free for Ray Data's read tasks on a small machine."""
    threads_per_worker: int = 2
    """torch intra-op threads per worker (real cores it may use)."""
    log_every: int = 50
    """Steps between metric logs and progress lines."""
    checkpoint_every: int = 500
    """Steps between checkpoints in OUTPUT.checkpoints (0: none); a rerun resumes from the last one."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self, where: str = "") -> None:
        prefix = f"{where}." if where else ""
        require(self.steps >= 1, f"{prefix}steps", f"{self.steps} must be at least 1")
        require(self.num_workers >= 1, f"{prefix}num_workers", f"{self.num_workers} must be at least 1")
        require(
            self.batch_size % self.num_workers == 0,
            f"{prefix}batch_size",
            f"{self.batch_size} must be divisible by num_workers={self.num_workers}",
        )
        require(0 <= self.label_dropout < 1, f"{prefix}label_dropout", f"{self.label_dropout} must be in [0, 1)")
        require(self.snr_gamma > 0, f"{prefix}snr_gamma", f"{self.snr_gamma} must be positive, e.g. 5")
        require(0 <= self.ema_decay < 1, f"{prefix}ema_decay", f"{self.ema_decay} must be in [0, 1)")
        require(
            self.checkpoint_every >= 0,
            f"{prefix}checkpoint_every",
            f"{self.checkpoint_every} must be 0 (off) or positive",
        )
        require(
            self.sharding.zero_stage <= 2,
            f"{prefix}sharding.zero_stage",
            f"{self.sharding.zero_stage}: teacher training saves from rank 0's full weights, use ZeRO stage 0-2",
        )
