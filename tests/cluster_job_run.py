"""Run by tests/test_placement.py in its own process: the tiny job submitted through Ray Jobs to a
simulated heterogeneous cluster, its roles placed by node kind.

    python -m tests.cluster_job_run TINY_ROOT OUT_DIR

The cluster (ray.cluster_utils.Cluster on this machine, dashboard and Jobs API on 127.0.0.1, token authentication
on): a head with
the dashboard (the Jobs API) and 1 CPU, one "inference" node (custom resource inference_gpu) and
two "train" nodes (train_gpu). `jobs.distill` on the tiny config goes in through
JobSubmissionClient with this repository as its working_dir, as `ray job submit --working-dir .`
sends it; its driver attaches to the cluster. The teacher must land on the inference node; critic
and generator, two ranks each (ZeRO-2), on train nodes. Writes OUT_DIR/result.json.
"""

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).parents[1]
TWO_TRAIN_RANKS = (
    "{ranks: 2, cpus_per_rank: 1, threads_per_rank: 1, node_resource: train_gpu, sharding: {zero_stage: 2}, "
    "optimizer: {learning_rate: 1.0e-4}}"
)


def submit(client, entrypoint: str, runtime_env: dict, timeout_s: float = 180) -> str:
    """Submit, retrying while the head's Jobs API is still coming up (it answers 503/504 until its agent registers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as error:
            if time.monotonic() > deadline:
                raise
            print(f"submit: {str(error)[:200]}; retrying", file=sys.stderr, flush=True)
            time.sleep(3)


def main(tiny_root: Path, out: Path) -> None:
    # Token authentication on for every process of this cluster, the driver and the Jobs client.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.run_helpers import free_port

    temp_dirs: list[str] = []
    started = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            # Its own agent port: the Jobs API needs the head's agent, and another cluster on this machine
            # (the test session's) already holds the default one.
            "dashboard_agent_listen_port": free_port(),
        },
    )
    try:
        kinds = {cluster.head_node.node_id: "head"}
        for kind, resource in (("inference", "inference_gpu"), ("train-a", "train_gpu"), ("train-b", "train_gpu")):
            # A temp dir per node, as separate machines have: nodes sharing one would unpack the job's
            # working_dir over each other's copy, removing the driver's current directory.
            temp_dir = tempfile.mkdtemp(prefix=f"ray-{kind}-")
            temp_dirs.append(temp_dir)
            kinds[cluster.add_node(num_cpus=2, resources={resource: 1}, temp_dir=temp_dir).node_id] = kind
        cluster.wait_for_nodes()
        client = JobSubmissionClient(f"http://{cluster.webui_url}")
        tracking = f"sqlite:///{out / 'mlflow.db'}"
        overrides = [
            f"teacher={tiny_root / 'teacher'}",
            f"data={tiny_root / 'data'}",
            f"output={out / 'run'}",
            "generator_steps=2",
            "roles.teacher.node_resource=inference_gpu",
            f"roles.critic={TWO_TRAIN_RANKS}",
            f"roles.generator={TWO_TRAIN_RANKS}",
        ]
        entrypoint = f"{sys.executable} -m jobs.distill --config jobs/configs/tiny.yaml " + " ".join(
            f"--set '{o}'" for o in overrides
        )
        # What `ray job submit --working-dir . --runtime-env-json '{"env_vars": ...}'` sends.
        submitted = time.monotonic()
        job = submit(client, entrypoint, {"working_dir": str(REPO), "env_vars": {"MLFLOW_TRACKING_URI": tracking}})
        status = None
        for _ in range(600):
            status = client.get_job_status(job)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(1)
        logs, info = client.get_job_logs(job), client.get_job_info(job)
        seconds = {
            "cluster_start": submitted - started,
            "job": (info.end_time - info.start_time) / 1000 if info.end_time else None,
        }
        summary_file = out / "run" / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        placed = {
            role: [kinds.get(node_id, node_id) for node_id in node_ids]
            for role, node_ids in summary.get("placement", {}).items()
        }
        (out / "result.json").write_text(
            json.dumps(
                {
                    "status": str(status),
                    "placed": placed,
                    "summary": summary,
                    "tracking_uri": tracking,
                    "seconds": seconds,
                    "logs_tail": logs[-4000:],
                }
            )
        )
    finally:
        cluster.shutdown()
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
