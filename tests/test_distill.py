"""DMD2 through real Ray role groups, real DeepSpeed (gloo, CPU) and a real MLflow store, on tiny models."""

import numpy as np
import pytest

from tests.run_helpers import CONFIGS, scrape_metrics, tiny_config


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


LIVE_METRICS = {
    f"ray_flashdistill_{name}" for name in ("step_seconds", "images_per_second", "calls_total", "bytes_received_total")
}


def critic_updates_of(metrics: dict[str, list[str]]) -> float | None:
    """The critic's train_step count of run "run" in scraped Prometheus lines."""
    lines = [
        line
        for line in metrics.get("ray_flashdistill_calls_total", [])
        if all(tag in line for tag in ('role="critic"', 'endpoint="train_step"', 'run="run"'))
    ]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else None


def teacher_received_bytes(metrics: dict[str, list[str]]) -> bool:
    """Whether the teacher's bytes-received counter of run "run" is among scraped Prometheus lines."""
    return any(
        'role="teacher"' in line and 'run="run"' in line
        for line in metrics.get("ray_flashdistill_bytes_received_total", [])
    )


ZERO3_RANKS = (
    "{ranks: 2, cpus_per_rank: 0.5, threads_per_rank: 1, sharding: {zero_stage: 3}, optimizer: {learning_rate: 1.0e-4}}"
)


@pytest.mark.parametrize(
    "roles",
    [
        [],
        # Every role a two-rank world with its parameters ZeRO-3-sharded (the teacher for inference).
        [f"roles.teacher={ZERO3_RANKS}", f"roles.critic={ZERO3_RANKS}", f"roles.generator={ZERO3_RANKS}"],
        # All critic updates before the generator's (the other order) replays too.
        ["dmd2.last_critic_update=before_generator"],
    ],
    ids=["one-rank", "two-rank-zero3", "one-rank-critic-before-generator"],
)
def test_checkpoint_round_trip_gives_identical_next_step(tiny_teacher, tmp_path, roles):
    """Save after one cycle, take a second cycle, load, take it again: the same metrics."""
    import ray

    from orchestrator.checkpoint import load_checkpoint, save_checkpoint
    from orchestrator.cycle import cycle
    from orchestrator.progress import Progress
    from orchestrator.role_group import start_roles

    # No real-data stream: exact replay. The weights read back are the generator's EMA (also checkpointed).
    config = tiny_config(tiny_teacher, tmp_path / "run", "dmd2.gan_generator_weight=0", "student.ema_decay=0.5", *roles)
    groups = start_roles(config, 1000)
    weights = lambda: ray.get(groups.generator.call_async("state"))[0]  # noqa: E731  (every rank: ZeRO-3 gathers)
    try:
        before = weights()
        cycle(groups, config, 0, np.random.default_rng([0, 0]))
        after = weights()
        checkpoint = save_checkpoint(groups, tmp_path / "checkpoints", Progress(generator_steps=1))
        first = cycle(groups, config, 1, np.random.default_rng([0, 1]))
        average_first = weights()
        progress = load_checkpoint(groups, checkpoint)
        again = cycle(groups, config, 1, np.random.default_rng([0, 1]))
        average_again = weights()
        critic_updates = 3 * config.dmd2.critic_updates_per_generator_update  # three cycles
        # Each actor's worker exports on its own clock: wait for every role's lines, not only the critic's.
        complete = lambda found: (
            LIVE_METRICS <= found.keys()
            and critic_updates_of(found) == critic_updates
            and teacher_received_bytes(found)
        )  # noqa: E731
        live = scrape_metrics("ray_flashdistill_", complete) if not roles else None
    finally:
        groups.shutdown()
    if (
        live is not None
    ):  # the dashboard's per-role metrics, read back from the node's metrics endpoint while the actors lived
        assert LIVE_METRICS <= live.keys(), sorted(live)
        assert critic_updates_of(live) == critic_updates, live["ray_flashdistill_calls_total"]
        assert teacher_received_bytes(live), live["ray_flashdistill_bytes_received_total"]
    assert before.keys() == after.keys() and any(not np.allclose(after[k].numpy(), before[k].numpy()) for k in after), (
        "the generator did not move"
    )
    assert progress.generator_steps == 1
    assert first.keys() == again.keys()
    for key in first:
        assert again[key] == pytest.approx(first[key], rel=1e-5, abs=1e-7), key
    assert any(not np.allclose(average_first[k].numpy(), after[k].numpy()) for k in after), "the average did not move"
    for key in average_first:
        np.testing.assert_allclose(
            average_again[key].numpy(), average_first[key].numpy(), rtol=1e-5, atol=1e-7, err_msg=key
        )


def test_dry_run_starts_nothing_and_prints_the_config(tiny_teacher, capsys):
    from jobs.distill import main

    assert (
        main(
            [
                "--config",
                str(CONFIGS / "tiny.yaml"),
                "--set",
                f"teacher={tiny_teacher / 'teacher'}",
                "--set",
                f"data={tiny_teacher / 'data'}",
                "--dry-run",
            ]
        )
        is None
    )
    out = capsys.readouterr().out
    assert "critic_updates_per_generator_update: 2" in out and "dry run" in out


@pytest.mark.parametrize(
    "autoscales, message",
    [
        (False, r"the cluster's totals cannot hold the roles at once \(8 CPU needed, 4 present;"),
        (True, r"roles.critic: the cluster could not place 3 rank\(s\) of \{'CPU': 2.0\} within 3s"),
    ],
    ids=["fixed-cluster-fails-before-waiting", "autoscaling-cluster-waits-placement-timeout"],
)
def test_an_unplaceable_role_fails_naming_the_role(tiny_teacher, tmp_path, autoscales, message):
    """Each rank fits on the node, all three together do not: a fixed cluster fails on its totals at once,
    one that autoscales after placement_timeout_s, naming the role that did not fit."""
    import time

    import ray

    from orchestrator.distill import distill
    from orchestrator.placement import PlacementError

    config = tiny_config(
        tiny_teacher,
        tmp_path / "run",
        "batch_size=30",
        "roles.critic.ranks=3",
        "roles.critic.cpus_per_rank=2",
        "placement_timeout_s=3",
        f"cluster_autoscales={str(autoscales).lower()}",
    )
    start = time.perf_counter()
    with pytest.raises(PlacementError, match=message):
        distill(config)
    assert time.perf_counter() - start < 60
    assert all(
        pg["state"] != "CREATED" for pg in ray.util.placement_group_table().values()
    )  # the teacher's group was released too
