"""The fault drill: the tiny job on a simulated multi-node cluster, each fault a shared GPU cluster deals in turn.

    python -m jobs.fault_drill [--output runs/fault_drill] [--seed 0] [--faults graceful_stop lost_node ...]

Starts a simulated cluster on this machine (a head, an inference_gpu node, a train_gpu node), trains
a tiny teacher on the digits, then injects each fault (graceful_stop, lost_node, capacity_never_returns,
lost_driver) at a generator step drawn from --seed, and prints one table: when each hit, the steps
lost, the seconds to recover, the final step, whether every checkpoint verifies, whether the MLflow
run stayed the same. OUTPUT/drill.md and drill.json hold it.
"""

import argparse
import os
import secrets
from pathlib import Path

import numpy as np

from jobs.cli import run_main
from orchestrator.fault_drill import FAULTS


def main(argv: list[str] | None = None) -> list | None:
    parser = argparse.ArgumentParser(prog="python -m jobs.fault_drill", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/fault_drill"))
    parser.add_argument("--seed", type=int, default=0, help="draws the step each fault hits at")
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    args = parser.parse_args(argv)
    output = args.output.resolve()
    # Token authentication on for every process of the simulated cluster, the drivers included.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{output / 'mlflow.db'}"
    output.mkdir(parents=True, exist_ok=True)
    import ray

    from orchestrator.config import TeacherTrainingConfig
    from orchestrator.config_loading import load_config
    from orchestrator.fault_drill import DrillCluster, run_fault, write_results
    from orchestrator.teacher_trainer import train_teacher
    from workers.data.shards import write_shards
    from workers.data.sources import digits_arrays

    cluster = DrillCluster.start()
    try:
        ray.init(address=cluster.cluster.address, log_to_driver=False)
        data, teacher = output / "data", output / "teacher"
        if not data.exists():
            write_shards(digits_arrays(), data)
        if not teacher.exists():
            recipe = Path(__file__).parent / "configs" / "teacher_tiny.yaml"
            train_teacher(load_config(TeacherTrainingConfig, recipe, [f"data={data}", f"output={teacher}", "steps=30"]))
        rng = np.random.default_rng(args.seed)
        results = []
        for fault in args.faults:
            print(f"[fault drill] {fault}", flush=True)
            results.append(run_fault(fault, cluster, teacher, data, output / fault, rng))
        print(write_results(results, output))
        return results
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    run_main(main)
