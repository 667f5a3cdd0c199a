"""Run by tests/test_placement.py in its own process: a simulated heterogeneous cluster, roles placed by node kind.

    python -m tests.heterogeneous_run TEACHER_DIR DATA_DIR OUT_JSON

Nodes (ray.cluster_utils.Cluster): a head with 1 CPU, one "inference" node (custom resource
inference_gpu) and two "train" nodes (train_gpu). The teacher must land on the inference node;
critic and generator, two ranks each (ZeRO-2), on train nodes. Two TTUR cycles then run across them.
"""

import json
import sys
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

from orchestrator.distill import cycle, start_roles
from tests.run_helpers import tiny_config


def main(teacher_root: Path, out: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    kinds = {"inference": cluster.add_node(num_cpus=2, resources={"inference_gpu": 1})}
    kinds["train-a"] = cluster.add_node(num_cpus=2, resources={"train_gpu": 1})
    kinds["train-b"] = cluster.add_node(num_cpus=2, resources={"train_gpu": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    two_ranks = "{ranks: 2, cpus_per_rank: 1, threads_per_rank: 1, node_resource: train_gpu, sharding: {zero_stage: 2}, optimizer: {learning_rate: 1.0e-4}}"
    config = tiny_config(teacher_root, out.parent / "run", "roles.teacher.node_resource=inference_gpu",
                         f"roles.critic={two_ranks}", f"roles.generator={two_ranks}")
    groups = start_roles(config, 1000)
    try:
        metrics = [cycle(groups, config, step, np.random.default_rng([0, step])) for step in range(2)]
        placed = {group.name: group.node_ids for group in groups.all()}
    finally:
        groups.shutdown()
    node_kinds = {node.node_id: kind for kind, node in kinds.items()}
    out.write_text(json.dumps({
        "placed": {role: [node_kinds.get(node_id, "head") for node_id in node_ids] for role, node_ids in placed.items()},
        "dm_loss": [m["generator/dm_loss"] for m in metrics],
    }))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
