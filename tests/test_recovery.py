"""Reliability through real Ray actors: a role's process killed mid-run, a job resumed, a run diverging.

The uninterrupted tiny run is the reference: a run whose role was killed must finish with every
generator step and reproduce the reference loss curve (CPU, fixed seed), and a resumed job must
continue the same MLflow run.
"""

import json
import shutil
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest

from tests.run_helpers import tiny_config

STEPS = 6
RUN = [f"generator_steps={STEPS}", "checkpoint_every=2", "log_every=1", "eval_every=0"]
CURVES = ("generator/dm_loss", "critic/denoising_loss", "critic/discriminator_loss", "generator/sample_std")
TOLERANCE = 1e-5  # relative: CPU, one thread per rank, seeded per call; measured equal to float32 round-off


def last_values(store: str, run_id: str, key: str) -> dict[int, float]:
    """The last value logged per step (a restarted run logs the steps it redoes again)."""
    history = sorted(mlflow.MlflowClient(store).get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def curves(store: str, run_id: str) -> dict[str, dict[int, float]]:
    return {key: last_values(store, run_id, key) for key in CURVES}


@pytest.fixture(scope="module")
def reference(tiny_teacher, tmp_path_factory):
    """The uninterrupted run: its output folder, MLflow store and loss curves."""
    from orchestrator.distill import distill

    root = tmp_path_factory.mktemp("reference")
    store = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        summary = distill(tiny_config(tiny_teacher, root / "run", *RUN))
    return root / "run", store, summary, curves(store, summary["mlflow_run_id"])


def kill_role_when(marker: Path, role: str, killed: list[int], stop: threading.Event) -> threading.Thread:
    """SIGKILL the process of `role`'s actor (Ray titles it ray::Critic...) once `marker` exists."""
    import os

    title, me = f"ray::{role.capitalize()}", os.getpid()

    def ours(process: psutil.Process) -> bool:  # started by this test session's Ray, not another run's
        return any(parent.pid == me for parent in process.parents())

    def watch() -> None:
        while not stop.is_set():
            if marker.exists():
                for process in psutil.process_iter(["cmdline"]):
                    if (process.info["cmdline"] or [""])[0].startswith(title) and ours(process):
                        process.kill()
                        killed.append(process.pid)
                        return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_each_killed_role_restarts_from_its_checkpoint_and_the_run_finishes_every_step(
    reference, tiny_teacher, tmp_path, monkeypatch
):
    """One run, three kills: the teacher after checkpoint 2, the critic after 3, the generator after 4."""
    from orchestrator.distill import distill

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    checkpoints, stop = tmp_path / "run" / "checkpoints", threading.Event()
    kills = {role: [] for role in ("teacher", "critic", "generator")}
    watchers = [
        kill_role_when(checkpoints / f"step-{step:06d}", role, kills[role], stop)
        for step, role in enumerate(kills, start=2)
    ]
    try:
        summary = distill(tiny_config(tiny_teacher, tmp_path / "run", *RUN, "checkpoint_every=1"))
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join()
    assert all(kills.values()), f"not every role's process was found to kill: {kills}"
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["restarts"] == 3
    assert written["generator_steps"] == written["target_generator_steps"] == STEPS
    # The loss curve of the interrupted run is the uninterrupted one's.
    got, want = curves(store, summary["mlflow_run_id"]), reference[3]
    for key in CURVES:
        assert sorted(got[key]) == list(range(1, STEPS + 1)), key
        np.testing.assert_allclose(
            [got[key][s] for s in sorted(got[key])],
            [want[key][s] for s in sorted(want[key])],
            rtol=TOLERANCE,
            err_msg=key,
        )


def test_a_resumed_job_continues_from_the_latest_checkpoint_in_the_same_mlflow_run(
    reference, tiny_teacher, tmp_path, monkeypatch
):
    from orchestrator.distill import distill

    output, store, first, _ = reference
    shutil.copytree(output, tmp_path / "run")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    summary = distill(tiny_config(tiny_teacher, tmp_path / "run", *RUN, f"generator_steps={STEPS + 2}"))
    assert Path(summary["resumed_from"]).name == f"step-{STEPS:06d}"
    assert summary["generator_steps"] == STEPS + 2
    assert summary["mlflow_run_id"] == first["mlflow_run_id"]
    assert sorted(last_values(store, first["mlflow_run_id"], "generator/dm_loss")) == list(range(1, STEPS + 3))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-000004",
        "step-000006",
        "step-000008",
    ]  # keep 3


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(reference, tmp_path):
    from orchestrator.checkpoint import CheckpointError, latest_checkpoint, verify_checkpoint

    shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
    newest = tmp_path / "checkpoints" / f"step-{STEPS:06d}"
    weights = newest / "generator" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # a write cut short
    with pytest.raises(CheckpointError, match="generator/model.safetensors is missing or not"):
        verify_checkpoint(newest)
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step-{STEPS - 2:06d}"


def test_a_diverging_run_stops_with_a_clear_error_and_writes_no_checkpoint_after_it(
    tiny_teacher, tmp_path, monkeypatch
):
    """lr 1e30 blows the generator's weights up after one step: every later update is non-finite and skipped."""
    from orchestrator.distill import NumericalError, distill

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = tiny_config(
        tiny_teacher,
        tmp_path / "run",
        "generator_steps=10",
        "checkpoint_every=1",
        "log_every=1",
        "eval_every=0",
        "roles.generator.optimizer.learning_rate=1.0e30",
        "roles.generator.optimizer.grad_clip=0",
        "fault_tolerance.max_nonfinite_in_a_row=2",
    )
    with pytest.raises(NumericalError, match="2 cycles in a row .* non-finite"):
        distill(config)
    written = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert written == ["step-000001"], written  # only the state before the first skipped update
