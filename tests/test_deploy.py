"""The KubeRay manifests and cluster.yaml come from one list of node kinds and use KubeRay's own field names."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "deploy" / "kuberay"

# The fields of KubeRay's v1 CRDs (ray-operator/config/crd/bases/ray.io_rayclusters.yaml, ray.io_rayjobs.yaml)
# that a manifest may set at each level; a misspelt key is silently dropped by the API server, so it is caught here.
RAY_CLUSTER_SPEC = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headGroupSpec",
    "workerGroupSpecs",
    "headServiceAnnotations",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
}
AUTOSCALER_OPTIONS = {
    "idleTimeoutSeconds",
    "upscalingMode",
    "image",
    "imagePullPolicy",
    "resources",
    "env",
    "envFrom",
    "securityContext",
    "volumeMounts",
    "version",
}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress", "suspend"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "rayStartParams",
    "template",
    "numOfHosts",
    "suspend",
    "idleTimeoutSeconds",
    "scaleStrategy",
}
RAY_JOB_SPEC = {
    "entrypoint",
    "runtimeEnvYAML",
    "rayClusterSpec",
    "clusterSelector",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "submitterPodTemplate",
    "submitterConfig",
    "submissionMode",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "jobId",
    "metadata",
    "suspend",
    "managedBy",
    "deletionStrategy",
}
CONTAINER = {"name", "image", "env", "envFrom", "resources", "volumeMounts", "ports", "command", "args", "lifecycle"}


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def check_cluster_spec(spec: dict) -> None:
    assert set(spec) <= RAY_CLUSTER_SPEC, set(spec) - RAY_CLUSTER_SPEC
    assert set(spec["autoscalerOptions"]) <= AUTOSCALER_OPTIONS
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())  # KubeRay takes strings only
    for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
        for container in template["spec"]["containers"]:
            assert set(container) <= CONTAINER, set(container) - CONTAINER


def test_the_manifests_and_cluster_yaml_are_current():
    result = subprocess.run([sys.executable, "deploy/build.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_manifests_use_kuberay_field_names():
    cluster, job = load("raycluster.yaml"), load("rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"], job["kind"]) == ("ray.io/v1", "RayCluster", "RayJob")
    check_cluster_spec(cluster["spec"])
    assert set(job["spec"]) <= RAY_JOB_SPEC, set(job["spec"]) - RAY_JOB_SPEC
    check_cluster_spec(job["spec"]["rayClusterSpec"])
    assert load("shared-volume.yaml")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_one_worker_group_per_node_kind_of_cluster_yaml_with_its_resources():
    node_types = yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"]
    spec = load("raycluster.yaml")["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0" and node_types["head"]["resources"] == {"CPU": 0}
    groups = {g["groupName"].replace("-", "_"): g for g in spec["workerGroupSpecs"]}
    assert set(groups) == set(node_types) - {"head"}
    for name, group in groups.items():
        resources, params = node_types[name]["resources"], group["rayStartParams"]
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
        assert json.loads(json.loads(params["resources"])) == custom and name in custom  # the roles are placed by it
        assert int(params["num-gpus"]) == resources["GPU"] and int(params["num-cpus"]) == resources["CPU"]
        assert (group["minReplicas"], group["maxReplicas"]) == (
            node_types[name]["min_workers"],
            node_types[name]["max_workers"],
        )
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == resources["GPU"]


def test_token_auth_mlflow_and_shared_storage_reach_every_pod():
    job = load("rayjob.yaml")["spec"]
    spec = job["rayClusterSpec"]
    templates = [
        spec["headGroupSpec"]["template"],
        *(g["template"] for g in spec["workerGroupSpecs"]),
    ]
    # The submitter runs inside the head pod, where the dashboard listens on 127.0.0.1 only.
    assert job["submissionMode"] == "SidecarMode" and "submitterPodTemplate" not in job
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for template in templates:
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "flashdistill-ray-token"
    for template in templates:
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]]
        assert mounts[0]["mountPath"] == "/shared" and claims == ["flashdistill-shared"]
    assert "--output /shared/" in job["entrypoint"]
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
