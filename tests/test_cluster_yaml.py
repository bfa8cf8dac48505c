"""The cluster launcher configs at the repository root (cluster*.yaml), checked as Ray checks its
own example configs (python/ray/tests/test_autoscaler_yaml.py): prepare_config fills in the
provider's defaults offline, then validate_config applies Ray's JSON schema and its own rules.
On top of that, what a user of `ray up` relies on and the schema does not say."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("cluster*.yaml"))
IMAGE_TAG = re.compile(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")
RAY_PIN = re.compile(r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)")
PIP_EDITABLE = re.compile(r"pip install (?:[^;&|]*\s)?(?:-e|--editable)\s+(\S+)")
IMPORTS_PROJECT = re.compile(r"\bimport\b[^'\"]*\bsearch\b")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(raw: dict) -> dict:
    config = copy.deepcopy(raw)
    provider = config["provider"]
    if provider["type"] == "local" and "coordinator_address" not in provider:
        # As Ray's test does: a shipped local config leaves the machines' addresses to the user.
        provider["head_ip"] = provider.get("head_ip") or "head.invalid"
        provider["worker_ips"] = provider.get("worker_ips") or ["worker.invalid"]
    return prepare_config(config)


def is_local(raw: dict) -> bool:
    return raw["provider"]["type"] == "local"


CLOUD = [p for p in CONFIGS if not is_local(load(p))]


def setup_commands(config: dict) -> list[str]:
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
                for c in config.get(key) or []]
    for node_type in config.get("available_node_types", {}).values():
        commands += node_type.get("worker_setup_commands") or []
    return commands


def docker_images(config: dict) -> list[str]:
    docker = config.get("docker") or {}
    images = [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]
    for node_type in config.get("available_node_types", {}).values():
        image = (node_type.get("docker") or {}).get("worker_image")
        images += [image] if image else []
    return images


def worker_types(raw: dict) -> dict[str, dict]:
    return {name: t for name, t in raw["available_node_types"].items()
            if name != raw["head_node_type"]}


def test_the_configs_are_found():
    """A renamed or moved config must not leave this file testing nothing."""
    names = [p.name for p in CONFIGS]
    assert "cluster.yaml" in names and "cluster-gcp.yaml" in names, names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_accepts_the_config(path):
    """`ray up` runs these same two steps first: a config they reject never starts a node."""
    raw = load(path)
    assert "head_node" not in raw and "worker_nodes" not in raw, \
        "legacy head_node/worker_nodes: use available_node_types and head_node_type"
    validate_config(prepared(raw))


@pytest.mark.parametrize("path", CLOUD, ids=lambda p: p.name)
def test_cloud_node_types(path):
    """Trials run only on the autoscaled GPU workers, never on the head beside the driver, and
    each worker type advertises whole CPUs and GPUs that it can actually launch."""
    raw = load(path)
    assert "available_node_types" in raw and "head_node_type" in raw
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU") == 0, \
        f"head advertises {head['resources']}: trials would be scheduled beside the driver"
    gpu_types = {n: t for n, t in worker_types(raw).items() if t["resources"].get("GPU")}
    assert gpu_types, "no worker type has a GPU"
    for name, node_type in gpu_types.items():
        for key, value in node_type["resources"].items():
            # Ray's draft-07 schema takes 1.0 for an integer; only 0.5 and the like fail there.
            assert isinstance(value, int) and not isinstance(value, bool), \
                f"{name}: {key}={value!r} is not a whole number"
        assert node_type["resources"]["CPU"] >= 1, f"{name}: no CPU for the trials"
        low, high = node_type.get("min_workers", 0), node_type["max_workers"]
        assert 0 <= low <= high and high >= 1, f"{name}: min_workers {low}, max_workers {high}"
        assert high <= raw["max_workers"], f"{name}: max_workers over the cluster's max_workers"


@pytest.mark.parametrize("path", CLOUD, ids=lambda p: p.name)
def test_idle_nodes_go_away(path):
    """An idle GPU node bills by the hour: the timeout is chosen here, not left to Ray's
    default. (A local cluster's machines are fixed; none goes away.)"""
    minutes = load(path).get("idle_timeout_minutes")
    assert isinstance(minutes, (int, float)) and 0 < minutes <= 60, minutes


@pytest.mark.parametrize("path", CLOUD, ids=lambda p: p.name)
def test_every_node_installs_this_checkout(path):
    """Trials import trainables/ and spaces/ on the worker that runs them: the checkout is
    mounted on every new node and installed there from the mounted path."""
    config = prepared(load(path))
    mounted = {remote.rstrip("/") for remote, local in (config.get("file_mounts") or {}).items()
               if (ROOT / Path(local).expanduser()).resolve() == ROOT}
    assert mounted, "no file_mounts entry ships the repository root"
    for key in ("head_setup_commands", "worker_setup_commands"):
        targets = {m.group(1).rstrip("/") for c in config[key] for m in PIP_EDITABLE.finditer(c)}
        assert targets & mounted, f"{key} never runs pip install -e on {sorted(mounted)}"
    excluded = config.get("rsync_exclude") or []
    assert ".venv" in excluded and ".git" in excluded, excluded


@pytest.mark.parametrize("path", [p for p in CONFIGS if p not in CLOUD], ids=lambda p: p.name)
def test_local_machines_are_checked_for_the_project(path):
    """Machines of a local cluster bring their own environment: `ray up` fails early on one
    where this project is not installed, rather than its trials failing later."""
    commands = setup_commands(prepared(load(path)))
    assert any(PIP_EDITABLE.search(c) or IMPORTS_PROJECT.search(c) for c in commands), commands


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_nodes_run_this_ray(path):
    """The search is tested against this venv's Ray, and the nodes run the Ray their image or
    setup pins: the two must be the same release. (On a local cluster the machines' own Ray may
    be left unpinned.)"""
    config = load(path)
    images = docker_images(config)
    assert all(IMAGE_TAG.search(image) for image in images), f"no Ray X.Y.Z in a tag: {images}"
    versions = [IMAGE_TAG.search(image).group(1) for image in images]
    versions += [m.group(1) for c in setup_commands(config) for m in RAY_PIN.finditer(c)]
    assert versions or is_local(config), "no rayproject image or ray==X.Y.Z pin for the nodes"
    assert set(versions) <= {ray.__version__}, (versions, ray.__version__)


def _fractional_gpu(config: dict) -> None:
    name = next(n for n, t in worker_types(config).items() if t["resources"].get("GPU"))
    config["available_node_types"][name]["resources"]["GPU"] = 0.5


def _no_head_node_type(config: dict) -> None:
    del config["head_node_type"]


def _legacy_head_node(config: dict) -> None:
    config["head_node"] = {"InstanceType": "m5.xlarge"}


@pytest.mark.parametrize("break_it, error", [
    (_fractional_gpu, jsonschema.ValidationError),
    (_no_head_node_type, ValueError),
    (_legacy_head_node, jsonschema.ValidationError),
], ids=["fractional GPU", "no head_node_type", "legacy head_node"])
def test_validation_rejects_a_broken_config(break_it, error):
    """The check above can fail: Ray refuses what `ray up` would refuse."""
    config = prepared(load(ROOT / "cluster.yaml"))
    break_it(config)
    with pytest.raises(error):
        validate_config(config)


def test_a_gpu_search_is_accepted_on_cluster_yaml_before_its_gpu_workers_are_up():
    """On a fresh `ray up cluster.yaml` only the CPU-less head is alive: the resource check
    reads the launcher's node types from the head's copy of this file, and accepts what a GPU
    worker will hold, and refuses what no node type holds, before any trial is queued."""
    from search.resources import ResourceError, check_resources, launcher_node_types

    head = [{"CPU": 0.0, "GPU": 0.0}]
    types = launcher_node_types(ROOT / "cluster.yaml")
    assert types == [{"CPU": 4.0, "GPU": 1.0}]
    check_resources(4, 1, head + types)
    with pytest.raises(ResourceError, match="no node of this Ray cluster"):
        check_resources(1, 2, head + types)
    with pytest.raises(ResourceError):
        check_resources(1, 1, head)  # without the launcher's config: nothing could ever run it
