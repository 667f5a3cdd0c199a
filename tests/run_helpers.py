"""Helpers shared by the tests that run distillations: the tiny config pointed at the session's tiny teacher."""

from pathlib import Path

from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


def tiny_config(root: Path, output: Path, *overrides: str) -> DistillConfig:
    """jobs/configs/tiny.yaml with the session's tiny teacher and data (`root`), writing to `output`."""
    return load_config(DistillConfig, CONFIGS / "tiny.yaml", [f"teacher={root / 'teacher'}", f"data={root / 'data'}", f"output={output}", *overrides])


def one_rank_world() -> None:
    """Join a one-rank gloo world on a free port (call inside a fresh Ray worker process)."""
    import os
    import socket

    import deepspeed

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
