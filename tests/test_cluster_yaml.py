"""cluster.yaml passes Ray's own cluster-launcher validation and names the nodes the roles need.

Validation is the offline half of what `ray up` does before it talks to AWS
(`ray.autoscaler._private.commands._bootstrap_config`): `prepare_config` (merge with the
AWS defaults.yaml, fill per-type min/max workers, merge setup commands) then
`validate_config` (ray-schema.json via jsonschema, plus head-type and min_workers checks).
The AWS-only steps (instance-type autodetection, IAM/VPC bootstrap) need boto3 and
credentials and are skipped: every node type here states its resources explicitly.
"""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.label_utils import validate_node_label_syntax, validate_node_labels
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def _validated(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return _validated(_raw())


def test_ray_launcher_validation_accepts_it(config):
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] == "head"


def test_node_types_and_custom_resources(config):
    types = config["available_node_types"]
    assert {"head", "inference_gpu", "train_gpu"} <= set(types)

    inference = types["inference_gpu"]["resources"]
    assert inference.get("GPU", 0) > 0
    assert inference.get("inference_gpu", 0) > 0
    assert "train_gpu" not in inference

    train = types["train_gpu"]["resources"]
    assert train.get("GPU", 0) > 0
    assert train.get("train_gpu", 0) > 0
    assert "inference_gpu" not in train

    for name in ("inference_gpu", "train_gpu"):
        node = types[name]
        assert node["max_workers"] >= max(1, node.get("min_workers", 0))
        assert node["node_config"]["InstanceType"]


def test_head_schedules_no_work(config):
    head = config["available_node_types"]["head"]["resources"]
    assert head.get("CPU") == 0
    assert head.get("GPU", 0) == 0
    assert not {"inference_gpu", "train_gpu"} & set(head)


def test_worker_caps_fit_global_max(config):
    types = config["available_node_types"]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]


def test_labels_are_valid_ray_node_labels(config):
    for node in config["available_node_types"].values():
        labels = node.get("labels", {})
        validate_node_labels(labels)  # no reserved "ray.io/" prefix
        validate_node_label_syntax(labels)  # Kubernetes label syntax, as `ray start --labels`


def test_dashboard_local_only_and_token_auth_kept(config):
    head_cmds = " ".join(config["head_start_ray_commands"])
    worker_cmds = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in head_cmds + worker_cmds
    for cmds in (head_cmds, worker_cmds):
        assert "RAY_AUTH_MODE=token" in cmds
        assert "RAY_AUTH_MODE=disabled" not in cmds


def test_setup_installs_cuda_torch_then_project(config):
    cmds = config["setup_commands"]
    torch_i = next(i for i, c in enumerate(cmds) if "pip install" in c and "torch" in c)
    proj_i = next(i for i, c in enumerate(cmds) if "pip install -e ." in c)
    assert "download.pytorch.org/whl/cu" in cmds[torch_i]
    assert torch_i < proj_i


def _misspelled_key(cfg):
    node = cfg["available_node_types"]["train_gpu"]
    node["resouces"] = node.pop("resources")


def _non_integer_resource(cfg):
    cfg["available_node_types"]["inference_gpu"]["resources"]["inference_gpu"] = "one"


def _unknown_head_type(cfg):
    cfg["head_node_type"] = "ray.head.default"


def _min_workers_over_global_max(cfg):
    cfg["available_node_types"]["train_gpu"]["min_workers"] = cfg["max_workers"] + 1
    cfg["available_node_types"]["train_gpu"]["max_workers"] = cfg["max_workers"] + 1


@pytest.mark.parametrize(
    "breakage",
    [_misspelled_key, _non_integer_resource, _unknown_head_type, _min_workers_over_global_max],
)
def test_broken_variants_are_rejected(breakage):
    broken = _raw()
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validated(broken)
