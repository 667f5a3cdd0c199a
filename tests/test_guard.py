"""The numerical guard on real DeepSpeed engines (gloo, CPU), each case in its own Ray worker process."""

import pytest


def guard_case(zero_stage: int, case: str) -> dict:
    """Wrap a tiny model in a one-rank DeepSpeed world, take one guarded step, report what changed."""
    import torch

    from orchestrator.config import OptimizerConfig, ShardingConfig
    from orchestrator.setups import deepspeed_config
    from tests.run_helpers import one_rank_world
    from workers.parallel.deepspeed import backward_and_step, wrap

    one_rank_world()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    engine = wrap(model, deepspeed_config(OptimizerConfig(learning_rate=0.1), ShardingConfig(zero_stage=zero_stage), 2))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.ones(2, 4)
    if case == "finite":
        loss = engine(x).pow(2).mean()
    elif case == "nonfinite_loss":
        loss = engine(x).sum() * float("inf")
    else:  # finite loss, NaN gradient: d sqrt(u)/du at u = 0 is inf, times 0
        loss = torch.sqrt(engine(x) * 0.0).sum()
    finite_loss = bool(torch.isfinite(loss))
    stepped = backward_and_step(engine, loss)
    after = model.state_dict()
    return {
        "finite_loss": finite_loss,
        "stepped": stepped,
        "changed": any(not torch.equal(before[k], after[k]) for k in before),
        "finite_weights": all(bool(torch.isfinite(v).all()) for v in after.values()),
    }


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_guard_steps_on_finite_and_skips_nonfinite_without_touching_weights(ray_local, zero_stage):
    run = ray_local.remote(guard_case)
    finite, bad_loss, bad_grad = ray_local.get(
        [run.remote(zero_stage, c) for c in ("finite", "nonfinite_loss", "nonfinite_grad")]
    )
    assert finite == {"finite_loss": True, "stepped": True, "changed": True, "finite_weights": True}
    assert bad_loss == {"finite_loss": False, "stepped": False, "changed": False, "finite_weights": True}
    assert bad_grad == {"finite_loss": True, "stepped": False, "changed": False, "finite_weights": True}


def test_saving_a_nonfinite_state_is_refused(tmp_path):
    import torch

    from workers.parallel.deepspeed import NonFiniteStateError, save_engine

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteStateError, match="NaN/inf"):
        save_engine(None, model, tmp_path / "critic", rank=0)
    assert not (tmp_path / "critic").exists()
