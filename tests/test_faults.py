"""What shared and spot clusters do to runs, done for real on a simulated multi-node cluster: a graceful stop
(SIGTERM), a lost node that comes back, capacity that never does, and a driver killed while checkpointing.
Each run must finish every step, losing at most one checkpoint interval, in one MLflow run."""

import numpy as np
import pytest

from orchestrator.fault_drill import CHECKPOINT_EVERY, STEPS, DrillCluster, run_fault


@pytest.fixture(scope="module")
def drill(ray_cluster, tiny_teacher, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    cluster = DrillCluster(ray_cluster)
    yield cluster, tiny_teacher
    cluster.remove_nodes()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def fault(name: str, drill, tmp_path, seed: int = 0):
    cluster, root = drill
    return run_fault(name, cluster, root / "teacher", root / "data", tmp_path / name, np.random.default_rng(seed))


def survived(result) -> None:
    assert result.final_step == STEPS, result
    assert 0 <= result.steps_lost <= CHECKPOINT_EVERY, result
    assert result.checkpoints_intact and result.same_mlflow_run, result


def test_sigterm_stops_after_the_cycle_with_a_checkpoint_and_the_rerun_continues(drill, tmp_path):
    result = fault("graceful_stop", drill, tmp_path)
    survived(result)
    assert result.steps_lost == 0 and result.resumed_from == result.hit_step
    assert "every step once" in result.note, result.note


def test_a_lost_node_is_waited_for_and_the_roles_are_re_placed(drill, tmp_path):
    result = fault("lost_node", drill, tmp_path)
    survived(result)
    assert "restarted 1 time" in result.note, result.note


def test_capacity_that_never_returns_stops_with_a_resumable_checkpoint_naming_the_role(drill, tmp_path):
    result = fault("capacity_never_returns", drill, tmp_path)
    survived(result)
    assert "roles.critic" in result.note and "train_gpu" in result.note, result.note


def test_a_driver_killed_while_checkpointing_resumes_from_the_last_complete_one(drill, tmp_path):
    result = fault("lost_driver", drill, tmp_path)
    survived(result)
    assert result.resumed_from is not None and result.resumed_from % CHECKPOINT_EVERY == 0
