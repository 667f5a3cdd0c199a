"""Shared fixtures: one real local Ray cluster for the whole session, tiny and on 127.0.0.1."""

import os
import secrets
import tempfile
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Token authentication on for the session's cluster and every process that joins it (subprocess drivers
# inherit the token); set before Ray is first imported, which reads the mode once.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# MLflow runs of tests that do not check them (the tiny teacher's) go to a store of the session's, not into the
# checkout's runs/mlflow.db; tests that check runs point MLFLOW_TRACKING_URI at a store of their own.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp(prefix='flashdistill-tests-')}/mlflow.db")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real Ray cluster for the whole session (`ray.cluster_utils.Cluster`: a head with 4 logical CPUs,
    more than the 2 real cores so small role groups fit), token authentication on. Tests that need more
    nodes add them (the fault tests: an inference_gpu and a train_gpu node)."""
    import ray
    from ray.cluster_utils import Cluster

    from tests.run_helpers import free_port

    head = {
        "num_cpus": 4,
        # The dashboard writes the Prometheus service discovery file the dashboard test scrapes by; 127.0.0.1 only.
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
        "_system_config": {
            "metrics_report_interval_ms": 1000,  # live metrics within a second or two
            # A node the fault tests remove is declared dead after 5 missed health checks a second apart
            # (Ray's default period is 3 s); a check still waits Ray's 10 s for a busy node's answer.
            "health_check_period_ms": 1000,
        },
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_local(ray_cluster):
    """The session's Ray, connected."""
    import ray

    return ray


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, ray_local):
    """Digits data and a tiny teacher trained with Ray Train + DeepSpeed, once per session."""
    from orchestrator.config import TeacherTrainingConfig
    from orchestrator.config_loading import load_config
    from orchestrator.teacher_trainer import train_teacher
    from workers.data.shards import write_shards
    from workers.data.sources import digits_arrays

    root = tmp_path_factory.mktemp("tiny")
    write_shards(digits_arrays(), root / "data")
    config = load_config(
        TeacherTrainingConfig,
        CONFIGS / "teacher_tiny.yaml",
        [f"data={root / 'data'}", f"output={root / 'teacher'}", "steps=30"],
    )
    train_teacher(config)
    return root
