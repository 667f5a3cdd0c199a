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
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay: {self.weight_decay} must not be negative")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: {list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]")


@dataclass
class ShardingConfig:
    """How DeepSpeed shards a trained role across its ranks."""

    zero_stage: int = 0
    """ZeRO stage 0-3: 0 replicates; 1 shards optimizer state; 2 also gradients; 3 also parameters."""
    bf16: bool = False
    """bf16 mixed precision (DMD2 used bf16; fp16 diverged). fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in the backward pass: less memory, about a third more compute."""

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

    if sharding.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW(params, lr=optimizer.learning_rate, betas=optimizer.betas, weight_decay=optimizer.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=adamw, config=deepspeed_config(optimizer, sharding, micro_batch))
    return engine


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Switch on diffusers' gradient checkpointing in every diffusers model inside `model`; returns how many."""
    from diffusers import ModelMixin

    models = [m for m in model.modules() if isinstance(m, ModelMixin) and m._supports_gradient_checkpointing]
    for m in models:
        m.enable_gradient_checkpointing()
    return len(models)


class NonFiniteStateError(RuntimeError):
    """A role's weights hold NaN or inf: its state must not be checkpointed."""


def all_ranks_finite(*tensors: torch.Tensor) -> bool:
    """True when every tensor is finite on every rank of this role's world (all ranks then agree to skip)."""
    flag = torch.tensor([float(all(bool(torch.isfinite(t).all()) for t in tensors))])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        flag = flag.cuda() if torch.distributed.get_backend() == "nccl" else flag
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def backward_and_step(engine, loss: torch.Tensor) -> bool:
    """The numerical guard: back-propagate and step unless the loss or a gradient is non-finite.

    Returns whether the step was applied. A skipped step leaves weights and optimizer state as they
    were, on every rank. ZeRO 1-3 optimizers find non-finite gradients themselves and skip.
    """
    if not all_ranks_finite(loss.detach()):
        return False
    engine.backward(loss)
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]  # empty under ZeRO 2-3
    if not all_ranks_finite(*grads):
        engine.zero_grad()
        return False
    skipped_before = engine.skipped_steps
    engine.step()
    return engine.skipped_steps == skipped_before


def step_metrics(engine, role: str, stepped: bool) -> dict[str, float]:
    """`role/skipped_steps`, and `role/grad_norm` when the step was applied (a skipped one has none)."""
    metrics = {f"{role}/skipped_steps": float(not stepped)}
    if stepped:
        metrics[f"{role}/grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
    return metrics


def save_engine(engine, model: torch.nn.Module, directory: Path, rank: int, extra: dict | None = None) -> None:
    """Weights (rank 0) and this rank's optimizer and LR-scheduler state (+ `extra`), as safetensors."""
    from safetensors.torch import save_file

    from workers.state_files import save_tree

    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteStateError(f"{len(bad)} weight tensors hold NaN/inf (first: {bad[0]}); refusing to checkpoint a corrupted state")
    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_file(weights, str(directory / "model.safetensors"))
    scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
    save_tree({"optimizer": engine.optimizer.state_dict(), "lr_scheduler": scheduler, "extra": extra or {}}, directory / f"optimizer-rank{rank}")


def load_engine(engine, model: torch.nn.Module, directory: Path, rank: int) -> dict:
    """Restore what `save_engine` wrote; returns its `extra`."""
    from safetensors.torch import load_file

    from workers.state_files import load_tree

    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    state = load_tree(directory / f"optimizer-rank{rank}")
    engine.optimizer.load_state_dict(state["optimizer"])
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    return state.get("extra") or {}
