"""DeepSpeed applied after a model is built: one config builder, one wrap function for every role."""

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class OptimizerConfig:
    """AdamW with DeepSpeed's linear warm-up to a constant learning rate (DMD2's recipe)."""

    learning_rate: float = 1e-5
    """Peak learning rate, reached after warmup_steps."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 (0: constant learning rate from the first step)."""
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 10.0
    """Global gradient-norm clipping (0: off)."""

    def check(self, where: str) -> None:
        from workers.errors import ConfigError

        if not self.learning_rate > 0:
            raise ConfigError(f"{where}.learning_rate: {self.learning_rate} must be positive, e.g. 1e-4")
        if self.warmup_steps < 0:
            raise ConfigError(f"{where}.warmup_steps: {self.warmup_steps} must be 0 or more")
        if self.grad_clip < 0:
            raise ConfigError(f"{where}.grad_clip: {self.grad_clip} must be 0 (off) or positive")


@dataclass
class ShardingConfig:
    """How DeepSpeed shards a trained role across its ranks."""

    zero_stage: int = 0
    """ZeRO stage 0-3: 0 replicates; 1 shards optimizer state; 2 also gradients; 3 also parameters."""
    bf16: bool = False
    """bf16 mixed precision (DMD2 used bf16; fp16 diverged). fp32 on CPU."""

    def check(self, where: str) -> None:
        from workers.errors import ConfigError

        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{where}.zero_stage: {self.zero_stage} is not a ZeRO stage; use 0, 1, 2 or 3")


def deepspeed_config(optimizer: OptimizerConfig, sharding: ShardingConfig, micro_batch: int) -> dict:
    """The DeepSpeed JSON config for one trained role."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": optimizer.grad_clip,
        "zero_optimization": {"stage": sharding.zero_stage},
        "bf16": {"enabled": sharding.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if optimizer.warmup_steps > 0:  # WarmupLR starts at lr 0: only when a warm-up is asked for
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": optimizer.learning_rate, "warmup_num_steps": optimizer.warmup_steps, "warmup_type": "linear"},
        }
    return config


def wrap(model: torch.nn.Module, optimizer: OptimizerConfig, sharding: ShardingConfig, micro_batch: int):
    """A DeepSpeed engine around an already built model, with torch's AdamW (no op to compile)."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW(params, lr=optimizer.learning_rate, betas=optimizer.betas, weight_decay=optimizer.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=adamw, config=deepspeed_config(optimizer, sharding, micro_batch))
    return engine


def save_engine(engine, model: torch.nn.Module, directory: Path, rank: int) -> None:
    """Weights (rank 0) and this rank's optimizer and LR-scheduler state, as safetensors."""
    from safetensors.torch import save_file

    from workers.state_files import save_tree

    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
    save_tree({"optimizer": engine.optimizer.state_dict(), "lr_scheduler": scheduler}, directory / f"optimizer-rank{rank}")


def load_engine(engine, model: torch.nn.Module, directory: Path, rank: int) -> None:
    from safetensors.torch import load_file

    from workers.state_files import load_tree

    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    state = load_tree(directory / f"optimizer-rank{rank}")
    engine.optimizer.load_state_dict(state["optimizer"])
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
