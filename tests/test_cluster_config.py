"""cluster.yaml validated offline with Ray's own schema; the KubeRay manifest as YAML."""

import copy
import os
from pathlib import Path

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    with open(os.path.join(REPO, name)) as f:
        return yaml.safe_load(f)


def validate(cfg):
    # Private API (Ray 2.60): pinned here so an upgrade that moves it is noticed.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_is_valid_for_ray():
    cfg = load("cluster.yaml")
    validate(cfg)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0, "the head must not run heavy work"
    gpu = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert gpu and all(
        t["resources"].get("GPU", 0) >= 1 and t["max_workers"] > t["min_workers"] for t in gpu
    )
    assert any("pip install -e ~/pff" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("where", ["top", "node_type"])
def test_a_misspelled_key_is_rejected(where):
    cfg = load("cluster.yaml")
    if where == "top":
        cfg["max_wrokers"] = cfg.pop("max_workers")
    else:
        node = cfg["available_node_types"]["gpu_worker"]
        node["min_wrokers"] = node.pop("min_workers")
    with pytest.raises(Exception, match="wrokers"):
        validate(cfg)


def test_kuberay_rayjob_manifest():
    job = load("deploy/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "jobs/label.py" in spec["entrypoint"] and "--out s3://" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [group] = cluster["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert "AWS_SECRET_ACCESS_KEY" not in Path(REPO, "deploy", "rayjob.yaml").read_text()
