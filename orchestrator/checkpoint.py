"""Checkpoints of every trained role plus the schedule's state, written atomically as safetensors.

    DIR/checkpoints/step-000100/critic/{model.safetensors, optimizer-rank*.safetensors|json}
    DIR/checkpoints/step-000100/generator/...     (+ ema-rank*.safetensors with student.ema_decay)
    DIR/checkpoints/step-000100/progress.json     generator steps done, seconds, metrics, MLflow run id
    DIR/checkpoints/step-000100/manifest.json     every file above with its size, written last

A checkpoint is written into a temporary folder and renamed into place, and a load checks every
file against the manifest, so a checkpoint is either whole or refused. The teacher is frozen: its
folder is the checkpoint.
"""

import json
import shutil
from pathlib import Path

import ray

from orchestrator.progress import Progress
from workers.errors import UserError

PROGRESS, MANIFEST = "progress.json", "manifest.json"


class CheckpointError(UserError):
    """A checkpoint folder is incomplete or not a checkpoint."""


def save_checkpoint(groups, root: Path, progress: Progress, keep: int = 3, timeout_s: float | None = None) -> Path:
    """Save critic and generator (every rank) and `progress`."""
    root = Path(root)
    final = root / f"step-{progress.generator_steps:06d}"
    staging = root / f".staging-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ray.get(
        groups.critic.call_async("save", str(staging / "critic"))
        + groups.generator.call_async("save", str(staging / "generator")),
        timeout=timeout_s,
    )
    progress.save(staging / PROGRESS)
    files = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
    (staging / MANIFEST).write_text(json.dumps({"files": files}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> Path:
    """`path` if its manifest lists every file with the right size; else CheckpointError naming what is wrong."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(
            f"checkpoint {path} has no {MANIFEST}: it is incomplete or not a checkpoint; point resume at a complete "
            f"OUTPUT/checkpoints/step-* folder"
        )
    for name, size in json.loads((path / MANIFEST).read_text())["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {path} is damaged: {name} is missing or not {size} bytes; resume from an older checkpoint"
            )
    return path


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under `root` that verifies; damaged ones are skipped with a note."""
    for path in sorted(Path(root).glob("step-*"), reverse=True):
        try:
            return verify_checkpoint(path)
        except CheckpointError as error:
            print(f"skipping {error}", flush=True)
    return None


def read_progress(path: Path) -> Progress:
    """The Progress saved with a checkpoint."""
    return Progress.load(Path(path) / PROGRESS)


def load_checkpoint(groups, path: Path, timeout_s: float | None = None) -> Progress:
    """Load every trained role's state; returns the Progress saved with it."""
    path = verify_checkpoint(path)
    ray.get(
        groups.critic.call_async("load", str(path / "critic"))
        + groups.generator.call_async("load", str(path / "generator")),
        timeout=timeout_s,
    )
    return read_progress(path)
