"""DeepSpeed applied after a model is built: one wrap function for every trained role, one for the frozen teacher;
and the process group they run in.

Both take DeepSpeed's own JSON config (the orchestrator builds it from the run's config,
`orchestrator.setups.deepspeed_config`): ZeRO stage, bf16, gradient clipping, the optimizer
(torch's AdamW, which needs no compiled op) and its warm-up.
"""

import os
from contextlib import nullcontext
from pathlib import Path

import torch


def import_deepspeed():
    """`deepspeed`, told not to JIT-compile its shared-memory all-reduce kernel on CPU.

    That kernel serves only `inference_all_reduce` (tensor-parallel inference), which no role calls;
    training collectives go through torch.distributed (gloo). Compiling it took 45-74 s of the first
    DeepSpeed start in every fresh environment here (`ninja` log), once per virtualenv path.
    DeepSpeed keeps its probe result in one module-level dict and reads it when building the
    backend, so marking the op incompatible there makes the backend fall back to gloo.
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def rendezvous_store(world_size: int, address: str, port: int = 0) -> torch.distributed.TCPStore:
    """The store a process group forms through. `port` 0: rank 0 hosts it on a port the OS picks (`.port`)
    and keeps it open until the group forms, since probing for a free port and binding it later lets another
    process take the port in between; else a rank connects to rank 0's at (`address`, `port`).

    torch's store listens on every interface whatever `address` it is given (the other ranks may be on
    other nodes); there `address` is only what the store reports as its host."""
    from deepspeed.constants import default_pg_timeout

    return torch.distributed.TCPStore(
        address, port, world_size, is_master=port == 0, timeout=default_pg_timeout, wait_for_workers=False
    )


def join_process_group(store: torch.distributed.TCPStore, rank: int, world_size: int, device: str) -> None:
    """Form the process group (gloo on CPU, nccl on GPU) through `store`; DeepSpeed then finds it formed."""
    from deepspeed.constants import default_pg_timeout

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")  # what DeepSpeed reads
    backend = "nccl" if device == "cuda" else "gloo"
    torch.distributed.init_process_group(
        backend, store=store, rank=rank, world_size=world_size, timeout=default_pg_timeout
    )
    import_deepspeed().init_distributed(dist_backend=backend, verbose=False)


def wrap(model: torch.nn.Module, deepspeed_config: dict, gradient_checkpointing: bool = False):
    """A DeepSpeed engine around an already built model; only parameters that require grad train."""
    deepspeed = import_deepspeed()

    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=deepspeed_config)
    return engine


def wrap_frozen(model: torch.nn.Module, deepspeed_config: dict):
    """The frozen teacher: as it is (replicated), or ZeRO-3-sharded across its role's ranks for inference.

    Sharded, every forward all-gathers the parameters it needs, so the ranks must run the same
    forwards in the same order: the orchestrator gives each teacher rank the same number of shards.
    """
    model.requires_grad_(False)
    bf16 = deepspeed_config.get("bf16", {}).get("enabled", False)
    if deepspeed_config.get("zero_optimization", {}).get("stage", 0) != 3:
        return model.to(torch.bfloat16) if bf16 else model
    engine, *_ = import_deepspeed().initialize(model=model, config=deepspeed_config)
    return engine.module


def full_parameters(model: torch.nn.Module, modifier_rank: int | None = None):
    """Every parameter whole on every rank inside the block: a no-op below ZeRO-3.

    Collective under ZeRO-3 (every rank of the role must enter). With `modifier_rank`, what that
    rank writes into the parameters is kept and re-partitioned on exit.
    """
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]  # ZeRO-3 marks the params it partitions
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full weights on CPU, on every rank (ZeRO-3 gathers them first: collective)."""
    with full_parameters(model):
        return {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}


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
    """Weights (rank 0; collective under ZeRO-3), this rank's optimizer and LR-scheduler state, `extra`: safetensors."""
    from safetensors.torch import save_file

    from workers.parallel.state_files import save_tree

    weights = full_state_dict(model)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteStateError(
            f"{len(bad)} weight tensors hold NaN/inf (first: {bad[0]}); refusing to checkpoint a corrupted state"
        )
    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_file(weights, str(directory / "model.safetensors"))
    scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
    save_tree(
        {"optimizer": optimizer_state(engine), "lr_scheduler": scheduler, "extra": extra or {}},
        directory / f"optimizer-rank{rank}",
    )


def load_engine(engine, model: torch.nn.Module, directory: Path, rank: int) -> dict:
    """Restore what `save_engine` wrote; returns its `extra`."""
    from safetensors.torch import load_file

    from workers.parallel.state_files import load_tree

    with full_parameters(model, modifier_rank=0):  # under ZeRO-3 rank 0's load is re-partitioned to all
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
    state = load_tree(directory / f"optimizer-rank{rank}")
    restore_optimizer_state(engine, state["optimizer"])
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    return state.get("extra") or {}


LOSS_SCALER = "loss_scaler"  # ZeRO 1-3 keep this object in their optimizer state; it is saved as its attributes
PARAM_SLICE_MAPPINGS = "param_slice_mappings"  # ZeRO 1-2: derived from the model at start, for universal checkpoints


def optimizer_state(engine) -> dict:
    """This rank's optimizer state with nothing that would need pickling."""
    state = dict(engine.optimizer.state_dict())
    state.pop(PARAM_SLICE_MAPPINGS, None)
    if LOSS_SCALER in state:
        state[LOSS_SCALER] = dict(vars(state[LOSS_SCALER]))
    return state


def restore_optimizer_state(engine, state: dict) -> None:
    if isinstance(state.get(LOSS_SCALER), dict):
        scaler = engine.optimizer.loss_scaler
        vars(scaler).update(state[LOSS_SCALER])
        state = state | {LOSS_SCALER: scaler}
    if engine.zero_optimization_stage() > 0:  # ZeRO takes every rank's state and picks its own by rank
        engine.optimizer.load_state_dict([state] * engine.world_size)
    else:
        engine.optimizer.load_state_dict(state)
