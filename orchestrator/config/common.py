"""Settings every job shares: MLflow tracking, the optimizer, DeepSpeed sharding, the UNet and its noise schedule."""

from dataclasses import dataclass
from typing import Literal

from orchestrator.config_loading import require

TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


@dataclass
class TrackingConfig:
    """Where a run is tracked in MLflow."""

    experiment: str = "flashdistill"
    """MLflow experiment name."""
    tracking_uri: str | None = None
    """MLflow tracking URI; MLFLOW_TRACKING_URI wins; unset: an embedded SQLite store in runs/mlflow.db."""
    run_name: str | None = None
    """MLflow run name; unset: the method and step count, e.g. dmd2-1step."""
    parent_run_id: str | None = None
    """Nest the run under this MLflow run (a sweep sets it for its trials)."""

    def check(self, where: str = "") -> None:
        prefix = f"{where}." if where else ""
        require(
            self.experiment.strip() != "",
            f"{prefix}experiment",
            "is empty; name the MLflow experiment, e.g. flashdistill",
        )
        uri = self.tracking_uri or ""
        scheme = uri.partition("://")[0] if "://" in uri else None
        require(
            scheme is None or scheme.split("+")[0] in TRACKING_SCHEMES,
            f"{prefix}tracking_uri",
            f"scheme {scheme!r} is not one MLflow stores runs in; use http(s)://HOST:PORT, sqlite:///PATH, "
            "file:///PATH or a database URI",
        )


@dataclass
class OptimizerConfig:
    """AdamW with a linear warm-up to a constant learning rate (DMD2's recipe), run by DeepSpeed."""

    learning_rate: float = 1e-5
    """Peak learning rate, reached after warmup_steps."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 (0: constant learning rate from the first step)."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decays."""
    grad_clip: float = 10.0
    """Global gradient-norm clipping (0: off)."""

    def check(self, where: str) -> None:
        require(self.learning_rate > 0, f"{where}.learning_rate", f"{self.learning_rate} must be positive, e.g. 1e-4")
        require(self.warmup_steps >= 0, f"{where}.warmup_steps", f"{self.warmup_steps} must be 0 or more")
        require(self.grad_clip >= 0, f"{where}.grad_clip", f"{self.grad_clip} must be 0 (off) or positive")
        require(self.weight_decay >= 0, f"{where}.weight_decay", f"{self.weight_decay} must not be negative")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{where}.betas",
            f"{list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]",
        )


@dataclass
class ShardingConfig:
    """How DeepSpeed shards a role across its ranks."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    """ZeRO stage: 0 replicates; 1 shards optimizer state; 2 also gradients; 3 also parameters."""
    bf16: bool = False
    """bf16 mixed precision (DMD2 used bf16; fp16 diverged). fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in the backward pass: less memory, about a third more compute."""


@dataclass
class UNetConfig:
    """A class-conditional diffusers `UNet2DModel`; `python bench/unet_sizing.py` measures candidates."""

    sample_size: int = 8
    """Image height and width in pixels."""
    channels: int = 1
    """Image channels (1 for grey, 3 for RGB)."""
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    """Channels per resolution level; each level after the first halves the resolution."""
    layers_per_block: int = 1
    """ResNet layers per level."""
    norm_num_groups: int = 8
    """GroupNorm groups; must divide every entry of block_out_channels."""
    attention: bool = False
    """Self-attention at the lowest resolution (costs time on CPU)."""

    def check(self, where: str) -> None:
        groups = self.norm_num_groups
        require(
            all(c % groups == 0 for c in self.block_out_channels),
            f"{where}.norm_num_groups",
            f"{groups} must divide every block_out_channels entry {list(self.block_out_channels)}",
        )


@dataclass
class ScheduleConfig:
    """The teacher's noise schedule, as a diffusers DDPMScheduler config.

    Default: Stable Diffusion's scaled-linear betas. Its terminal alpha is 0.068, so the x0
    conversion at t = 999 amplifies the network's error by 14.6, against 157 for diffusers'
    default linear betas: the one-step generator, conditioned at t = 999, trains stably on it.
    """

    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    """diffusers beta schedule."""
    beta_start: float = 0.00085
    """First beta."""
    beta_end: float = 0.012
    """Last beta."""
    num_train_timesteps: int = 1000
    """T, the number of noise levels."""
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    """What the network predicts."""

    def check(self, where: str) -> None:
        require(
            0 < self.beta_start < self.beta_end < 1,
            where,
            f"need 0 < beta_start < beta_end < 1, got {self.beta_start} and {self.beta_end}",
        )
        require(
            self.num_train_timesteps >= 2,
            f"{where}.num_train_timesteps",
            f"{self.num_train_timesteps} must be at least 2 (1000 is standard)",
        )
