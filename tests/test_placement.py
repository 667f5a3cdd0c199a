"""Roles placed by node kind on a simulated heterogeneous cluster (ray.cluster_utils.Cluster, own process)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_roles_land_on_their_node_kinds_and_train_across_them(tiny_teacher, tmp_path):
    out = tmp_path / "placement.json"
    done = subprocess.run([sys.executable, "-m", "tests.heterogeneous_run", str(tiny_teacher), str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["placed"]["teacher"] == ["inference"]
    for role in ("critic", "generator"):
        assert len(result["placed"][role]) == 2 and all(kind.startswith("train") for kind in result["placed"][role]), result["placed"]
    assert len(result["dm_loss"]) == 2 and all(loss == loss for loss in result["dm_loss"])  # two cycles, finite
