"""DeepSpeed applied after a model is built: switches that must not change results, state that round-trips."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from orchestrator.config import UNetConfig
from tests.math_helpers import one_thread  # noqa: F401  (fixture)
from workers.models.folders import build_unet


def test_gradient_checkpointing_gives_the_same_gradients():
    """The switch (roles.*.sharding.gradient_checkpointing) trades compute for memory, never the result."""
    import copy

    from workers.parallel.deepspeed import enable_gradient_checkpointing

    torch.manual_seed(5)
    eps_unet = build_unet(0, **asdict(UNetConfig()))
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(6)), torch.tensor([10, 200, 500, 900])
    grads = []
    for checkpointing in (False, True):
        unet = copy.deepcopy(eps_unet).train()
        if checkpointing:
            assert enable_gradient_checkpointing(unet) == 1 and unet.is_gradient_checkpointing
        unet(x, t).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_the_rendezvous_port_is_held_from_the_moment_it_is_handed_out():
    """Rank 0's store owns its port before the other ranks hear of it: no other process can take it in
    between (a probed-then-closed free port can be, and two roles form their worlds at the same moment)."""
    import errno
    import socket

    from workers.parallel.deepspeed import rendezvous_store

    store = rendezvous_store(2, "127.0.0.1")
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", store.port))
    assert taken.value.errno == errno.EADDRINUSE
    client = rendezvous_store(2, "127.0.0.1", store.port)  # and a rank reaches it there
    client.set("rank1", "here")
    assert store.get("rank1") == b"here"


def engine_round_trip(zero_stage: int, directory: str) -> dict:
    """Step, save, step; then a fresh engine loads the save and steps: the two second steps must agree."""
    from orchestrator.config import OptimizerConfig, ShardingConfig
    from orchestrator.setups import deepspeed_config
    from tests.run_helpers import one_rank_world
    from workers.parallel.deepspeed import backward_and_step, full_state_dict, load_engine, save_engine, wrap

    one_rank_world()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    def engine(seed: int):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
        return wrap(
            model,
            deepspeed_config(
                OptimizerConfig(learning_rate=0.05, warmup_steps=3), ShardingConfig(zero_stage=zero_stage), 8
            ),
        ), model

    def step(engine) -> None:
        assert backward_and_step(engine, engine(x).pow(2).mean())

    first, model = engine(seed=0)
    step(first)
    save_engine(first, model, Path(directory), rank=0, extra={"note": "kept"})
    step(first)
    second, other = engine(seed=7)  # other initial weights: everything must come from the save
    extra = load_engine(second, other, Path(directory), rank=0)
    step(second)
    a, b = full_state_dict(model), full_state_dict(other)
    import deepspeed.comm.comm

    return {
        "extra": extra,
        "max_difference": max(float((a[k] - b[k]).abs().max()) for k in a),
        "stage": second.zero_optimization_stage(),
        "shm_kernel_built": deepspeed.comm.comm.cdb.shm_comm_op is not None,
    }


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_engine_state_round_trips_through_safetensors_at_every_zero_stage(ray_local, tmp_path, zero_stage):
    """Weights, optimizer moments and the warm-up schedule come back: the next step is the same step."""
    result = ray_local.get(ray_local.remote(engine_round_trip).remote(zero_stage, str(tmp_path)))
    assert result["stage"] == zero_stage and result["extra"] == {"note": "kept"}
    assert result["max_difference"] < 1e-6, result
    assert not result["shm_kernel_built"], (
        "DeepSpeed built its shared-memory inference kernel (a minute of JIT compile no role needs)"
    )


def test_weight_average_follows_its_formula_and_swaps_back():
    from workers.parallel.weight_average import WeightAverage

    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Linear(3, 2).requires_grad_(False)
    both = torch.nn.Sequential(model, frozen)
    start = model.weight.detach().clone()
    average = WeightAverage(both, decay=0.75)
    assert len(average.average) == 2  # the frozen layer is not averaged
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update()
    average.update()
    expected = start + 1.0 * (1 - 0.75**2)  # two steps toward start + 1
    trained = model.weight.detach().clone()
    with average.swapped_in():
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), trained)
