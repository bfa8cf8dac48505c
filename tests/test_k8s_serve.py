"""k8s/rayservice.yaml, checked against KubeRay's own RayService CRD the way the Kubernetes API
server checks it (tests/crd.py; skipped, saying so, without ../shared/kuberay), and its
serveConfigV2 against Ray Serve's own config schema. On top: the application it names builds
from its args, its replicas fit the GPU workers, the proxies' port is the one KubeRay's Service
targets, the model's credentials come from a Secret, and the image is k8s/rayjob.yaml's."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from tests.crd import cel_rules, crd_schema, errors, quantity, validator_of

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "k8s" / "rayservice.yaml"
SERVE_PORT = 8000  # KubeRay's serve Service targets the pods' port named serve, 8000


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def serve_config(service: dict | None = None) -> dict:
    return yaml.safe_load((service or manifest())["spec"]["serveConfigV2"])


def ray_containers(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    return [t["spec"]["containers"][0] for t in templates]


@pytest.fixture(scope="module")
def raw_schema() -> dict:
    return crd_schema("RayService")


def test_the_manifest_passes_kuberays_rayservice_schema(raw_schema):
    service = manifest()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert not errors(validator_of(raw_schema), service)
    assert cel_rules(service, raw_schema) == [], "a rule jsonschema cannot run: check it by hand"


def test_the_check_refuses_a_misspelled_field(raw_schema):
    service = manifest()
    service["spec"]["serveConfigv2"] = service["spec"].pop("serveConfigV2")
    assert errors(validator_of(raw_schema), service)


def test_serve_config_passes_ray_serves_own_schema():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config())
    assert config.http_options.host == "0.0.0.0" and config.http_options.port == SERVE_PORT
    broken = serve_config()  # the check can fail: Serve refuses what it cannot deploy
    broken["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"] = -1
    with pytest.raises(ValueError):
        ServeDeploySchema.model_validate(broken)
    # Serve lets an unknown key of an application through: the manifest's keys are its own
    (app,) = serve_config()["applications"]
    assert set(app) <= set(type(config.applications[0]).model_fields)
    assert set(app["deployments"][0]) <= set(type(config.applications[0].deployments[0])
                                              .model_fields)


def test_the_application_builds_from_its_args():
    """The import path resolves in this project and builds the service from the manifest's args,
    every one a ServiceSettings field (the model, a URI, is downloaded only by a replica); the
    deployment options name the deployment the builder makes."""
    from ray.serve.deployment import Application

    from search.serve_settings import ServiceSettings

    (app,) = serve_config()["applications"]
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert isinstance(builder(app["args"]), Application)
    settings = ServiceSettings.from_args(app["args"])
    assert settings.model.startswith(("s3://", "gs://")) and settings.batching
    with pytest.raises(ValueError, match="unknown service settings"):
        builder({**app["args"], "max_batch": 8})
    # `serve run search.serving:app_builder max_batch_size=8 ...` passes strings
    typed = ServiceSettings.from_args({"model": "s3://b/m", "max_batch_size": "8",
                                       "batching": "false", "batch_wait_s": "0.01"})
    assert (typed.max_batch_size, typed.batching, typed.batch_wait_s) == (8, False, 0.01)
    for bad in ({"max_images": "0"}, {"batching": "maybe"}, {"max_images": "2.5"}):
        with pytest.raises(ValueError):
            ServiceSettings.from_args({"model": "s3://b/m", **bad})
    (deployment,) = app["deployments"]
    assert deployment["name"] == "Classifier"
    assert deployment["max_ongoing_requests"] >= settings.max_batch_size


def test_the_replicas_fit_the_gpu_workers():
    service = manifest()
    (deployment,) = serve_config(service)["applications"][0]["deployments"]
    need = deployment["ray_actor_options"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "replicas on the head"
    workers = cluster["workerGroupSpecs"]
    gpus = sum(quantity(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["minReplicas"]
               for g, c in zip(workers, ray_containers(service)[1:], strict=True))
    cpus = sum(quantity(c["resources"]["limits"]["cpu"]) * g["minReplicas"]
               for g, c in zip(workers, ray_containers(service)[1:], strict=True))
    assert 0 < need["num_gpus"] <= 1, "a fraction of one GPU, or one"
    assert deployment["num_replicas"] * need["num_gpus"] <= gpus
    assert deployment["num_replicas"] * need["num_cpus"] < cpus, "no CPU left for the proxy"


def test_every_pod_exposes_the_serve_port_and_runs_the_search_image():
    service = manifest()
    for container in ray_containers(service):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("serve") == SERVE_PORT, container["name"]
    job = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
    images = {c["image"] for c in ray_containers(service)}
    assert images == {job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]}
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == \
        job["spec"]["rayClusterSpec"]["rayVersion"]


def test_the_model_credentials_come_from_a_secret():
    for container in ray_containers(manifest())[1:]:  # the workers, which download the model
        env = {e["name"]: e for e in container["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"], name
            assert "value" not in env[name]
