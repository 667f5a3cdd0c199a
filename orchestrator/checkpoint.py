"""Checkpoints of every trained role plus the schedule's state, written atomically as safetensors.

    DIR/checkpoints/step-000100/critic/{model.safetensors, optimizer-rank*.safetensors|json}
    DIR/checkpoints/step-000100/generator/...
    DIR/checkpoints/step-000100/progress.json     generator steps done, seconds, last metrics

A checkpoint is written into a temporary folder and renamed into place, so a folder named
step-* is always complete. The teacher is frozen: its folder is the checkpoint.
"""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import ray

PROGRESS = "progress.json"


def save_checkpoint(groups, root: Path, progress, keep: int = 3) -> Path:
    """Save critic and generator (every rank) and `progress` (an orchestrator.distill.Progress)."""
    root = Path(root)
    final = root / f"step-{progress.generator_steps:06d}"
    staging = root / f".staging-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ray.get(groups.critic.call_async("save", str(staging / "critic")) + groups.generator.call_async("save", str(staging / "generator")))
    (staging / PROGRESS).write_text(json.dumps(asdict(progress), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    complete = sorted(p for p in Path(root).glob("step-*") if (p / PROGRESS).is_file())
    return complete[-1] if complete else None


def load_checkpoint(groups, path: Path):
    from orchestrator.distill import Progress

    path = Path(path)
    ray.get(groups.critic.call_async("load", str(path / "critic")) + groups.generator.call_async("load", str(path / "generator")))
    return Progress(**json.loads((path / PROGRESS).read_text()))
