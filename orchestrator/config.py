"""Typed configs of the jobs. Every field has a default and a docstring; `check` validates across fields."""

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config_loading import require
from workers.deepspeed_setup import OptimizerConfig, ShardingConfig
from workers.models import UNetConfig
from workers.schedule import ScheduleConfig


@dataclass
class TrackingConfig:
    experiment: str = "flashdistill"
    """MLflow experiment name."""
    tracking_uri: str | None = None
    """MLflow tracking URI; MLFLOW_TRACKING_URI wins; unset: an embedded SQLite store in runs/mlflow.db."""


@dataclass
class TeacherTrainingConfig:
    """Training a class-conditional diffusion teacher with Ray Train and DeepSpeed."""

    data: Path = Path("runs/data/digits")
    """Parquet data set folder written by jobs.prepare_data."""
    output: Path = Path("runs/demo/teacher")
    """Where the teacher's model folder is written."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(learning_rate=1e-3, warmup_steps=100, grad_clip=1.0))
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 128
    """Global batch size, split evenly over the workers."""
    label_dropout: float = 0.1
    """Fraction of labels replaced by the null label, so the teacher also learns the unconditional score (CFG)."""
    ema_decay: float = 0.999
    """Decay of the weights' exponential moving average; the EMA is what is saved."""
    guidance_scale: float = 1.0
    """Classifier-free guidance the saved teacher samples with by default (1: none)."""
    seed: int = 0
    num_workers: int = 1
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    cpus_per_worker: int = 1
    """Logical CPUs each worker reserves; keep one free for Ray Data's read tasks on a small machine."""
    threads_per_worker: int = 2
    """torch intra-op threads per worker (real cores it may use)."""
    log_every: int = 50
    """Steps between metric logs and progress lines."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self, where: str = "") -> None:
        prefix = f"{where}." if where else ""
        require(self.steps >= 1, f"{prefix}steps", f"{self.steps} must be at least 1")
        require(self.num_workers >= 1, f"{prefix}num_workers", f"{self.num_workers} must be at least 1")
        require(self.batch_size % self.num_workers == 0, f"{prefix}batch_size", f"{self.batch_size} must be divisible by num_workers={self.num_workers}")
        require(0 <= self.label_dropout < 1, f"{prefix}label_dropout", f"{self.label_dropout} must be in [0, 1)")
        require(0 <= self.ema_decay < 1, f"{prefix}ema_decay", f"{self.ema_decay} must be in [0, 1)")
        require(self.sharding.zero_stage <= 2, f"{prefix}sharding.zero_stage", f"{self.sharding.zero_stage}: teacher training saves from rank 0's full weights, use ZeRO stage 0-2")
        groups = self.unet.norm_num_groups
        require(all(c % groups == 0 for c in self.unet.block_out_channels), f"{prefix}unet.norm_num_groups", f"{groups} must divide every block_out_channels entry {list(self.unet.block_out_channels)}")
