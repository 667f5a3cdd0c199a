"""A Ray Tune sweep of tiny distillations against a real MLflow server on 127.0.0.1; each trial is a
whole distillation, checked end to end (summary, checkpoints, MLflow run, exported student)."""

import json

import pytest

from tests.run_helpers import CONFIGS


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite store; yields its URI."""
    from orchestrator.tracking import local_server

    with local_server(tmp_path) as uri:
        yield uri


def test_a_two_trial_sweep_of_whole_distillations_nests_their_mlflow_runs_and_exports_the_best(
    tiny_teacher, tmp_path, mlflow_server, monkeypatch
):
    import mlflow

    from orchestrator.sweep import SweepSpec, sweep
    from workers.models.inference import sample_from_folder

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    half = "{cpus_per_rank: 0.5, threads_per_rank: 1}"
    overrides = [
        f"teacher={tiny_teacher / 'teacher'}",
        f"data={tiny_teacher / 'data'}",
        "generator_steps=2",
        "roles.critic.optimizer.learning_rate=1.0e-4",
        f"roles.teacher={half}",
        f"roles.critic={half}",
        f"roles.generator={half}",
    ]
    spec = SweepSpec(
        CONFIGS / "tiny.yaml",
        overrides,
        {"dmd2.critic_updates_per_generator_update": {"grid": [1, 2]}},
        tmp_path / "sweep",
        num_samples=1,
        early_stopping=False,
    )
    rows = sweep(spec)

    assert len(rows) == 2 and {r["dmd2.critic_updates_per_generator_update"] for r in rows} == {1, 2}
    assert all(r["status"] == "done" and r["fd"] > 0 for r in rows) and rows[0]["fd"] <= rows[1]["fd"]
    assert (tmp_path / "sweep" / "results.md").read_text().count("\n") == 4  # header, rule, two trials
    assert sample_from_folder(tmp_path / "sweep" / "best" / "student", 2, 4, seed=0).images.shape == (4, 1, 8, 8)
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("flashdistill")
    [parent] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'sweep-sweep'")
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == 2 and parent.data.params["sweep.early_stopping"] == "False"
    for run in trials:
        trial = tmp_path / "sweep" / "trials" / run.info.run_name.rsplit("-", 1)[1]
        summary = json.loads((trial / "summary.json").read_text())
        ratio = int(run.data.params["dmd2.critic_updates_per_generator_update"])
        assert (
            summary["generator_steps"] == 2
            and summary["critic_steps"] == 2 * ratio
            and summary["mlflow_run_id"] == run.info.run_id
        )
        assert sorted(p.name for p in (trial / "checkpoints").iterdir()) == ["step-000002"]
        assert run.info.run_name.startswith("dmd2-2step-")  # method and step count, then the trial id
        assert {
            "generator/dm_loss",
            "critic/denoising_loss",
            "generator/sample_std",
            "teacher/dm_x0_seconds",
            "eval/fd",
        } <= run.data.metrics.keys()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"student_grid.png", "config.yaml", "summary.json", "student"} <= artifacts, artifacts
        assert sample_from_folder(trial / "student", 2, 4, seed=0).network_passes == 2
    assert parent.data.metrics["best_fd"] == pytest.approx(rows[0]["fd"])


def test_early_stopping_is_asha_from_the_first_evaluation_and_off_is_fifo():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.config import DistillConfig
    from orchestrator.config_loading import load_config
    from orchestrator.sweep import trial_scheduler

    base = load_config(DistillConfig, CONFIGS / "digits.yaml", [])
    assert isinstance(trial_scheduler(base, True), ASHAScheduler)
    assert type(trial_scheduler(base, False)) is FIFOScheduler
