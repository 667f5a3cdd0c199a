"""Helpers shared by the tests that run distillations: the tiny config pointed at the session's tiny teacher."""

from pathlib import Path

from orchestrator.config import DistillConfig
from orchestrator.config_loading import load_config

CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


def tiny_config(root: Path, output: Path, *overrides: str) -> DistillConfig:
    """jobs/configs/tiny.yaml with the session's tiny teacher and data (`root`), writing to `output`."""
    return load_config(DistillConfig, CONFIGS / "tiny.yaml", [f"teacher={root / 'teacher'}", f"data={root / 'data'}", f"output={output}", *overrides])
