"""Shared fixtures: one real local Ray cluster for the whole session, tiny and on 127.0.0.1."""

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster with 4 logical CPUs (more than the 2 real cores, so small role groups fit)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
