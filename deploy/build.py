"""Write the cluster definitions from one list of node kinds: cluster.yaml (Ray's cluster launcher, AWS) and the
KubeRay manifests in deploy/kuberay/ (RayCluster, RayJob, the shared volume), so the two cannot drift.

    python deploy/build.py           # rewrite them
    python deploy/build.py --check   # exit 1 when any is stale (the test suite runs this check)

The roles find their nodes by custom resources: teacher ranks ask for `inference_gpu`, critic and
generator ranks for `train_gpu` (roles.<role>.node_resource); each node kind below carries its own.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RAY_VERSION = "2.60.0"
IMAGE = "REPLACE_ME/flashdistill:latest"  # EDIT: an image with this project installed (pip install -e .)
SHARED = "/shared"  # the shared volume every pod mounts: job --output folders, checkpoints, MLflow artifacts


@dataclass
class NodeKind:
    name: str
    purpose: str
    resources: dict[str, float]  # Ray's logical resources on one node: CPU, GPU, custom
    aws_instance: str
    aws_disk_gb: int
    memory: str  # a Kubernetes pod's memory request
    min_workers: int = 0
    max_workers: int = 0
    labels: dict[str, str] = field(default_factory=dict)


HEAD = NodeKind(
    "head",
    "CPU only: job drivers, GCS, dashboard, autoscaler; CPU 0 keeps tasks and actors off it",
    {"CPU": 0},
    "m7i.2xlarge",
    200,
    "32Gi",
    labels={"flashdistill/pool": "head"},
)
WORKERS = [
    NodeKind(
        "inference_gpu",
        "the frozen teacher: inference only, one A10G (24 GB) each, cheap to scale out",
        {"CPU": 4, "GPU": 1, "inference_gpu": 1},
        "g5.xlarge",
        200,
        "16Gi",
        0,
        4,
        {"flashdistill/pool": "inference"},
    ),
    NodeKind(
        "train_gpu",
        "critic and generator: trained with DeepSpeed on NVLink-connected A100s",
        {"CPU": 96, "GPU": 8, "train_gpu": 8},
        "p4d.24xlarge",
        500,
        "1000Gi",
        0,
        2,
        {"flashdistill/pool": "train"},
    ),
]
HEAD_CPUS = 8  # the head pod's real cores (its Ray CPU resource stays 0)


# ---------------------------------------------------------------- cluster.yaml (Ray cluster launcher)

CLUSTER_HEADER = """\
# Ray cluster-launcher config for flashdistill on AWS (`ray up cluster.yaml`).
# Written by `python deploy/build.py` from the node kinds there, as deploy/kuberay/ is: edit those, not this.
#
# Lines marked "EDIT:" must be changed before the first `ray up`.
# Run `ray up` from the repository root: file_mounts below sync "." to the nodes.
# Before `ray up`, create the cluster's auth token once on your machine:
#   ray get-auth-token --generate        # writes ~/.ray/auth_token
#
# Node types map to the roles through custom resources (and labels):
{kinds}
"""

CLUSTER_FOOTER = """\
head_node_type: head

# The repo is synced so setup can `pip install -e .` it; jobs still ship their code
# with `ray job submit --working-dir .`. The auth token is copied to every node so
# all of them (and drivers on the head) join with token authentication on.
file_mounts:
  ~/flashdistill: .
  ~/.ray/auth_token: ~/.ray/auth_token
rsync_exclude: [".venv", ".git", "runs", "mlruns", "mlflow.db", "**/__pycache__", "*.egg-info"]

# Python 3.11 in a venv (the project needs >=3.11; the AMI's system Python is older),
# made by uv and activated in ~/.bashrc so every later command and `ray start` use it.
setup_commands:
  - command -v ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh
  - test -x ~/venv/bin/python || ~/.local/bin/uv venv --seed --python 3.11 ~/venv
  - grep -qxF 'source ~/venv/bin/activate' ~/.bashrc || echo 'source ~/venv/bin/activate' >> ~/.bashrc
  # CUDA build of torch first: the default index may give a wheel for another CUDA.
  - pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cu126
  # Pin Ray to the version on your machine (`ray --version`): client and cluster must match.
  - pip install "ray[default,train,tune]=={ray}"   # EDIT: if your local Ray differs
  - cd ~/flashdistill && pip install -e .

# The head's autoscaler launches EC2 instances through boto3.
head_setup_commands:
  - pip install "boto3>=1.34"

# Dashboard on 127.0.0.1 only: reach it through `ray dashboard cluster.yaml` (SSH tunnel),
# never from the network. RAY_AUTH_MODE=token keeps token authentication on; the token
# comes from ~/.ray/auth_token (file_mounts above). Metrics are exported on port 8080 for
# Prometheus (docs/dashboards.md).
head_start_ray_commands:
  - ray stop
  - >-
    export RAY_AUTH_MODE=token;
    ulimit -n 65536;
    ray start --head --port=6379 --object-manager-port=8076
    --autoscaling-config=~/ray_bootstrap_config.yaml
    --dashboard-host=127.0.0.1 --dashboard-port=8265 --metrics-export-port=8080

worker_start_ray_commands:
  - ray stop
  - >-
    export RAY_AUTH_MODE=token;
    ulimit -n 65536;
    ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076 --metrics-export-port=8080
"""


def flow(mapping: dict) -> str:
    return json.dumps(mapping)  # a JSON object is a YAML flow mapping


def cluster_yaml() -> str:
    kinds = "\n".join(f"#   {k.name:<13} {k.purpose}" for k in [HEAD, *WORKERS])
    lines = [
        CLUSTER_HEADER.format(kinds=kinds),
        "cluster_name: flashdistill",
        "",
        "# Sum of the worker max_workers below; the autoscaler never goes above it.",
        f"max_workers: {sum(k.max_workers for k in WORKERS)}",
        "upscaling_speed: 1.0",
        "# GPU nodes are expensive: release them after 10 idle minutes.",
        "idle_timeout_minutes: 10",
        "",
        "provider:",
        "  type: aws",
        "  region: us-west-2                 # EDIT: your region (p4d capacity varies by region/AZ)",
        "  availability_zone: us-west-2a,us-west-2b",
        "  cache_stopped_nodes: true         # stop (not terminate) idle nodes: faster restarts, EBS still billed",
        "",
        "auth:",
        '  ssh_user: ubuntu                  # Ubuntu-based Deep Learning AMIs log in as "ubuntu"',
        "",
        "available_node_types:",
    ]
    for kind in [HEAD, *WORKERS]:
        lines += [f"  {kind.name}:", f"    # {kind.purpose[0].upper()}{kind.purpose[1:]}."]
        if kind is not HEAD:
            lines += [f"    min_workers: {kind.min_workers}", f"    max_workers: {kind.max_workers}"]
        lines += [
            f"    resources: {flow(kind.resources)}",
            f"    labels: {flow(kind.labels)}",
            "    node_config:",
            f"      InstanceType: {kind.aws_instance}",
            '      ImageId: ami-REPLACE_ME       # EDIT: "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)"',
            "      BlockDeviceMappings:",
            "        - DeviceName: /dev/sda1",
            f"          Ebs: {{VolumeSize: {kind.aws_disk_gb}, VolumeType: gp3}}",
            "",
        ]
    return "\n".join(lines) + CLUSTER_FOOTER.replace("{ray}", RAY_VERSION)


# ---------------------------------------------------------------- KubeRay (RayCluster, RayJob)

AUTH_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "flashdistill-ray-token", "key": "token"}}},
]
VOLUME = {"name": "shared", "persistentVolumeClaim": {"claimName": "flashdistill-shared"}}
MOUNT = {"name": "shared", "mountPath": SHARED}


def pod(container: str, kind: NodeKind, cpus: float, gpus: float, ports: list[dict] | None = None) -> dict:
    limits = {"cpu": str(int(cpus)), "memory": kind.memory} | ({"nvidia.com/gpu": str(int(gpus))} if gpus else {})
    spec = {
        "name": container,
        "image": IMAGE,
        "env": AUTH_ENV,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [MOUNT],
    }
    if ports:
        spec["ports"] = ports
    return {"metadata": {"labels": kind.labels}, "spec": {"containers": [spec], "volumes": [VOLUME]}}


def custom_resources(kind: NodeKind) -> dict:
    return {k: v for k, v in kind.resources.items() if k not in ("CPU", "GPU")}


def ray_cluster_spec() -> dict:
    # The dashboard listens on 127.0.0.1 in the head pod only: the RayJob's submitter runs there as a sidecar
    # (SidecarMode), and people reach it with `kubectl port-forward`; token authentication guards it too.
    head_ports = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8080, "name": "metrics"},
    ]
    head_pod = pod("ray-head", HEAD, HEAD_CPUS, 0, head_ports)
    head_pod["spec"]["restartPolicy"] = "Never"  # SidecarMode's requirement: the operator replaces a failed head
    workers = []
    for kind in WORKERS:
        params = {
            "num-cpus": str(int(kind.resources["CPU"])),
            "num-gpus": str(int(kind.resources.get("GPU", 0))),
            "resources": json.dumps(json.dumps(custom_resources(kind))),
            "metrics-export-port": "8080",
        }
        workers.append(
            {
                "groupName": kind.name.replace("_", "-"),
                "replicas": kind.min_workers,
                "minReplicas": kind.min_workers,
                "maxReplicas": kind.max_workers,
                "rayStartParams": params,
                "template": pod("ray-worker", kind, kind.resources["CPU"], kind.resources.get("GPU", 0)),
            }
        )
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": 600, "upscalingMode": "Default"},
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "127.0.0.1", "metrics-export-port": "8080"},
            "template": head_pod,
        },
        "workerGroupSpecs": workers,
    }


def ray_cluster() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "flashdistill"},
        "spec": ray_cluster_spec(),
    }


def ray_job() -> dict:
    entrypoint = (
        f"python -m jobs.distill --config jobs/configs/digits.yaml --output {SHARED}/runs/digits "
        "--set roles.teacher.node_resource=inference_gpu --set roles.teacher.gpus_per_rank=1 "
        "--set roles.critic.node_resource=train_gpu --set roles.critic.gpus_per_rank=1 "
        "--set roles.generator.node_resource=train_gpu --set roles.generator.gpus_per_rank=1"
    )
    runtime_env = yaml.safe_dump(
        {
            "env_vars": {
                "MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc.cluster.local:5000",  # EDIT: your MLflow server
                "RAY_JOB_STOP_WAIT_TIME_S": "180",  # `ray job stop` / a deleted RayJob: time for the last checkpoint
            }
        },
        sort_keys=False,
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "flashdistill-digits"},
        "spec": {
            "entrypoint": entrypoint,
            "runtimeEnvYAML": runtime_env,
            # A resubmission after a failure resumes from the checkpoints in the shared volume.
            "backoffLimit": 2,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            # The submitter runs in the head pod and reaches the dashboard on 127.0.0.1 (KubeRay 1.3 or later).
            "submissionMode": "SidecarMode",
            "rayClusterSpec": ray_cluster_spec(),
        },
    }


def shared_volume() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "flashdistill-shared"},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "REPLACE_ME",  # EDIT: an RWX class (NFS, EFS)
            "resources": {"requests": {"storage": "500Gi"}},
        },
    }


MANIFEST_HEADER = "# Written by `python deploy/build.py` from the node kinds there (as cluster.yaml is): edit those.\n"


class ManifestDumper(yaml.SafeDumper):
    """Plain YAML for kubectl readers: no anchors for repeated blocks, multi-line strings as literal blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


ManifestDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def outputs() -> dict[Path, str]:
    dump = lambda doc: MANIFEST_HEADER + yaml.dump(doc, Dumper=ManifestDumper, sort_keys=False, width=120)
    return {
        REPO / "cluster.yaml": cluster_yaml(),
        REPO / "deploy" / "kuberay" / "raycluster.yaml": dump(ray_cluster()),
        REPO / "deploy" / "kuberay" / "rayjob.yaml": dump(ray_job()),
        REPO / "deploy" / "kuberay" / "shared-volume.yaml": dump(shared_volume()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a written file is stale")
    check = parser.parse_args().check
    stale = []
    for path, text in outputs().items():
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(REPO)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        sys.exit(f"stale: {', '.join(stale)}: run `python deploy/build.py`")


if __name__ == "__main__":
    main()
