"""Shared fixtures: one real local Ray cluster for the whole session, tiny and on 127.0.0.1."""

import os

from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster with 4 logical CPUs (more than the 2 real cores, so small role groups fit)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, ray_local):
    """Digits data and a tiny teacher trained with Ray Train + DeepSpeed, once per session."""
    from orchestrator.config import TeacherTrainingConfig
    from orchestrator.config_loading import load_config
    from orchestrator.teacher_training import train_teacher
    from workers.data import digits_arrays, write_shards

    root = tmp_path_factory.mktemp("tiny")
    write_shards(digits_arrays(), root / "data")
    config = load_config(TeacherTrainingConfig, CONFIGS / "teacher_tiny.yaml", [f"data={root / 'data'}", f"output={root / 'teacher'}", "steps=30"])
    train_teacher(config)
    return root
