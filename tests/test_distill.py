"""DMD2 through real Ray role groups, real DeepSpeed (gloo, CPU) and a real MLflow store, on tiny models."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.run_helpers import CONFIGS, tiny_config


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_tiny_distillation_end_to_end(tiny_teacher, tmp_path, mlflow_store):
    """A few TTUR cycles through teacher, critic and generator actors; the student loads and samples."""
    import mlflow

    from orchestrator.distill import distill
    from workers.inference import sample_from_folder

    summary = distill(tiny_config(tiny_teacher, tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["generator_steps"] == 4 and written["critic_steps"] == 8
    assert np.isfinite(written["final_metrics"]["generator/dm_loss"])
    assert written["evaluations"][-1]["fd"] > 0
    result = sample_from_folder(Path(summary["student"]), 2, 20, seed=0)
    assert result.images.shape == (20, 1, 8, 8) and result.network_passes == 2
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    client = mlflow.MlflowClient(mlflow_store)
    run = client.get_run(summary["mlflow_run_id"])
    assert "generator/dm_loss" in run.data.metrics and "critic/denoising_loss" in run.data.metrics
    assert "generator/sample_std" in run.data.metrics and "teacher/dm_x0_seconds" in run.data.metrics
    assert run.data.params["dmd2.critic_updates_per_generator_update"] == "2"
    assert run.info.run_name == "dmd2-2step"  # method and step count, unless tracking.run_name says otherwise
    assert any(a.path == "student_grid.png" for a in client.list_artifacts(run.info.run_id))


def test_checkpoint_round_trip_gives_identical_next_step(tiny_teacher, tmp_path):
    """Save after one cycle, take a second cycle, load, take it again: the same metrics."""
    from orchestrator.checkpoint import load_checkpoint, save_checkpoint
    from orchestrator.distill import Progress, cycle, start_roles

    config = tiny_config(tiny_teacher, tmp_path / "run", "dmd2.gan_generator_weight=0")  # no real-data stream: exact replay
    groups = start_roles(config, 1000)
    try:
        cycle(groups, config, 0, np.random.default_rng([0, 0]))
        checkpoint = save_checkpoint(groups, tmp_path / "checkpoints", Progress(generator_steps=1))
        first = cycle(groups, config, 1, np.random.default_rng([0, 1]))
        progress = load_checkpoint(groups, checkpoint)
        again = cycle(groups, config, 1, np.random.default_rng([0, 1]))
    finally:
        groups.shutdown()
    assert progress.generator_steps == 1
    assert first.keys() == again.keys()
    for key in first:
        assert again[key] == pytest.approx(first[key], rel=1e-5, abs=1e-7), key


def test_two_rank_roles_with_zero2(tiny_teacher, tmp_path):
    """Critic and generator as two-rank DeepSpeed ZeRO-2 worlds of their own; the teacher as one rank."""
    from orchestrator.distill import cycle, start_roles

    two_ranks = "{ranks: 2, cpus_per_rank: 0.5, threads_per_rank: 1, sharding: {zero_stage: 2}, optimizer: {learning_rate: 1.0e-4}}"
    config = tiny_config(tiny_teacher, tmp_path / "run", f"roles.critic={two_ranks}", f"roles.generator={two_ranks}", "roles.teacher.cpus_per_rank=0.5")
    groups = start_roles(config, 1000)
    try:
        before = groups.generator.actors[0].state.remote()
        metrics = cycle(groups, config, 0, np.random.default_rng(0))
        import ray

        before, after = ray.get(before), ray.get(groups.generator.actors[0].state.remote())
        other = ray.get(groups.generator.actors[1].state.remote())
    finally:
        groups.shutdown()
    assert np.isfinite(metrics["generator/dm_loss"]) and np.isfinite(metrics["critic/denoising_loss"])
    changed = [k for k in after if not np.allclose(after[k].numpy(), before[k].numpy())]
    assert changed, f"the generator's weights did not move: {metrics}"
    for key in after:  # data-parallel ranks stay in sync
        np.testing.assert_allclose(after[key].numpy(), other[key].numpy(), rtol=1e-5, atol=1e-6)


def test_dry_run_starts_nothing_and_prints_the_config(tiny_teacher, capsys):
    from jobs.distill import main

    assert main(["--config", str(CONFIGS / "tiny.yaml"), "--set", f"teacher={tiny_teacher / 'teacher'}", "--set", f"data={tiny_teacher / 'data'}", "--dry-run"]) is None
    out = capsys.readouterr().out
    assert "critic_updates_per_generator_update: 2" in out and "dry run" in out


def test_an_unplaceable_role_fails_within_its_timeout_naming_the_role(tiny_teacher, tmp_path):
    """Each rank fits on the node, all three together do not: the wait ends at placement_timeout_s."""
    import time

    import ray

    from orchestrator.distill import distill
    from orchestrator.role_group import PlacementError

    config = tiny_config(tiny_teacher, tmp_path / "run", "batch_size=30", "roles.critic.ranks=3", "roles.critic.cpus_per_rank=2", "placement_timeout_s=3")
    start = time.perf_counter()
    with pytest.raises(PlacementError, match=r"roles.critic: the cluster could not place 3 rank\(s\) of \{'CPU': 2.0\} within 3s"):
        distill(config)
    assert time.perf_counter() - start < 60
    assert all(pg["state"] != "CREATED" for pg in ray.util.placement_group_table().values())  # the teacher's group was released too
