"""The tiny job through Ray Jobs on a simulated heterogeneous cluster, roles placed by node kind (own process)."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow

REPO = Path(__file__).parents[1]


def test_a_submitted_job_places_roles_on_their_node_kinds_and_succeeds(tiny_teacher, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.cluster_job_run", str(tiny_teacher), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "SUCCEEDED", result["logs_tail"]
    assert result["placed"]["teacher"] == ["inference"], result["placed"]
    for role in ("critic", "generator"):
        assert len(result["placed"][role]) == 2 and all(kind.startswith("train") for kind in result["placed"][role]), (
            result["placed"]
        )
    assert result["summary"]["generator_steps"] == 2 and result["summary"]["evaluations"][-1]["fd"] > 0
    run = mlflow.MlflowClient(result["tracking_uri"]).get_run(
        result["summary"]["mlflow_run_id"]
    )  # in the store the job was given
    assert run.info.status == "FINISHED" and "generator/dm_loss" in run.data.metrics


def test_a_node_death_that_ray_could_not_rebuild_counts_as_a_role_failure_and_a_bug_does_not():
    from ray.exceptions import ActorDiedError, UnserializableException

    from orchestrator.placement import is_role_failure

    died = "ActorDiedError: The actor died because its node has died. Node Id: b66878"
    assert is_role_failure(UnserializableException(died))  # Ray Data's read, on the node that went away
    assert is_role_failure(ActorDiedError())
    assert not is_role_failure(UnserializableException("ValueError: the shard's schema does not match"))
    assert not is_role_failure(ValueError("a bug"))
