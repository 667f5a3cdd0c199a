"""The training progress record: what the schedule has done so far, saved with every checkpoint.

It lives apart from the loop (orchestrator/distill.py) and the checkpoints (orchestrator/checkpoint.py),
which both read and write it, so neither imports the other.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Progress:
    """The schedule's state, saved with every checkpoint."""

    generator_steps: int = 0
    """Generator updates done (each after N critic updates)."""
    critic_updates: int = 0
    """Critic updates done."""
    seconds: float = 0.0
    """Seconds the schedule has run, over every start of the run."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The latest cycle's metrics."""
    evaluations: list[dict] = field(default_factory=list)
    """Every evaluation so far, each with its generator step."""
    mlflow_run_id: str | None = None
    """The run's MLflow run: a resumed run continues it."""
    restarts: int = 0
    """Times the role groups were restarted after a failure, over the whole run."""
    resumes: list[int] = field(default_factory=list)
    """The generator step of every checkpoint the run loaded, on a rerun or after a failure."""
    sample_means: list[float] = field(default_factory=list)
    """The generated images' mean at every log: the stability signal, summarised by `oscillation`."""
    nonfinite_in_a_row: int = 0
    """Cycles in a row in which the numerical guard skipped an update."""
    skipped_cycles: int = 0
    """Cycles with a skipped update, over the whole run."""

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Progress":
        return cls(**json.loads(Path(path).read_text()))


def oscillation(values: list[float]) -> float | None:
    """Standard deviation of the step-to-step changes of a logged series (0 for a steady or
    smoothly drifting one): how much the generated mean swings between logs."""
    return float(np.std(np.diff(values))) if len(values) > 2 else None
