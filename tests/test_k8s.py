"""k8s/rayjob.yaml, checked against KubeRay's own RayJob CRD the way the Kubernetes API server
checks it, and k8s/Dockerfile, the image it runs. On top of the schema, what a user relies on and
the schema does not say: the search's command line, GPU workers, credentials from a Secret, and
one image that holds this project and the manifest's Ray.

The CRD is read from ../shared/kuberay beside the repository (tests/crd.py); the schema tests
skip, saying so, where that folder is missing."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.crd import cel_rules, crd_schema, errors, quantity, validator_of

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "k8s" / "rayjob.yaml"
DOCKERFILE = ROOT / "k8s" / "Dockerfile"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
# the characters bash takes literally: a word made only of them means the same unquoted
PLAIN_WORD = re.compile(r"[\w@%+=:,./-]+")


def manifest() -> dict:
    # a fresh copy each time: YAML aliases (&storage-env) make shared lists a test could mutate
    return yaml.safe_load(MANIFEST.read_text())


def ray_containers(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    return [t["spec"]["containers"][0] for t in templates]  # KubeRay's Ray container: the first


def entrypoint_args(job: dict):
    """The entrypoint's run.py arguments, parsed by the harness's own parser (an unknown flag or
    a bad value raises UsageError, as run.py would exit 2)."""
    from search.options import build_parser

    words = shlex.split(job["spec"]["entrypoint"])
    script = next(i for i, w in enumerate(words) if w.endswith("search/run.py"))
    return words, words[script], build_parser().parse_args(words[script + 1:])


@pytest.fixture(scope="module")
def raw_schema() -> dict:
    return crd_schema("RayJob")


@pytest.fixture(scope="module")
def validator(raw_schema):
    return validator_of(raw_schema)


def test_the_manifest_passes_kuberays_rayjob_schema(validator):
    job = manifest()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert not errors(validator, job)


def test_no_field_of_the_manifest_carries_a_rule_the_check_cannot_run(raw_schema):
    """jsonschema cannot evaluate the CRD's CEL rules (on deletionStrategy, managedBy, the GCS
    fault tolerance backend): the manifest sets none of those fields, so nothing went unchecked.
    A field that does must be checked against its rule by hand."""
    assert cel_rules(manifest(), raw_schema) == []


def _rename(path: tuple, old: str, new: str):
    def change(job):
        node = job
        for key in path:
            node = node[key]
        node[new] = node.pop(old)
    return change


def _set(path: tuple, value):
    def change(job):
        node = job
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop_group_name(job):
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]


def _duplicate_env(job):
    env = ray_containers(job)[1]["env"]
    env.append(dict(env[0]))


CLUSTER = ("spec", "rayClusterSpec")
HEAD_CONTAINER = (*CLUSTER, "headGroupSpec", "template", "spec", "containers", 0)
BROKEN = {
    "a misspelled field": _rename(("spec",), "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
    "a misspelled field in the pod": _rename(HEAD_CONTAINER, "resources", "resource"),
    "a number for a string": _set((*CLUSTER, "headGroupSpec", "rayStartParams", "num-cpus"), 0),
    "a string for an integer": _set(("spec", "activeDeadlineSeconds"), "3h"),
    "past int32": _set(("spec", "ttlSecondsAfterFinished"), 2**31),
    "not one of the enum": _set((*CLUSTER, "authOptions", "mode"), "Token"),
    "not a quantity": _set((*HEAD_CONTAINER, "resources", "limits", "memory"), "12 GiB"),
    "a required field left out": _drop_group_name,
    "an env var named twice": _duplicate_env,
}


@pytest.mark.parametrize("break_it", BROKEN.values(), ids=BROKEN.keys())
def test_the_check_refuses_a_broken_manifest(validator, break_it):
    """The check can fail: what the API server would refuse, it refuses."""
    job = manifest()
    break_it(job)
    assert errors(validator, job)


def test_a_plain_jsonschema_check_would_miss_a_misspelled_field(raw_schema):
    """Why structural() exists: the CRD's schema as it stands lets any unknown field through."""
    job = manifest()
    BROKEN["a misspelled field"](job)
    assert jsonschema.Draft4Validator(raw_schema).is_valid(job)


# --- what the schema does not say --------------------------------------------------------------


def test_kuberay_accepts_the_spec():
    """Rules KubeRay's operator applies before it creates anything (ValidateRayJobMetadata and
    ValidateRayJobSpec in ray-operator/controllers/ray/utils/validation.go) that apply here."""
    job = manifest()
    name, spec = job["metadata"]["name"], job["spec"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert spec["shutdownAfterJobFinishes"] or not spec.get("ttlSecondsAfterFinished")
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    cluster = spec["rayClusterSpec"]
    if cluster["authOptions"]["mode"] == "token":
        major, minor, _ = (int(part) for part in cluster["rayVersion"].split("."))
        assert (major, minor) >= (2, 52), "token auth needs Ray 2.52 or newer"
    for group in cluster["workerGroupSpecs"]:  # without the autoscaler both bounds are set
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group


def test_the_search_starts_once_its_gpu_workers_are_up():
    """The harness checks each trial's request against the live nodes before it queues any, and
    on KubeRay no launcher config lists node types still to come: the workers are a fixed group,
    and the job is submitted only once the cluster is ready (K8sJobMode's submitter Job; a
    SidecarMode submitter starts with the head pod, before the workers)."""
    spec = manifest()["spec"]
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    cluster = spec["rayClusterSpec"]
    assert not cluster.get("enableInTreeAutoscaling")
    for group in cluster["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] == group.get("replicas", 0), group


def test_the_entrypoint_runs_a_search_with_shared_storage():
    """The command is one the harness accepts, with storage every node reaches and the cluster
    it runs on; and plain words only, since KubeRay pastes it unquoted into a bash line."""
    words, script, args = entrypoint_args(manifest())
    assert words[0] in ("python", "python3") and script.endswith("/search/run.py")
    assert args.strategy and args.address == "auto"
    assert args.storage.startswith(("s3://", "gs://")), args.storage
    assert args.name, "a fixed --name, so a failed run can be continued with --resume NAME"
    odd = [w for w in words if not PLAIN_WORD.fullmatch(w)]
    assert not odd, f"words the submitter's bash would not pass through as they are: {odd}"


def test_the_trials_fit_the_workers_as_ray_sees_them():
    """The harness's own resource check, on the nodes as KubeRay starts them: the head with
    rayStartParams num-cpus 0 and no GPU, each worker with its limits."""
    from search.resources import check_resources

    job = manifest()
    _, _, args = entrypoint_args(job)
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "trials would run beside the driver"
    assert "nvidia.com/gpu" not in ray_containers(job)[0]["resources"].get("limits", {})
    nodes = [{"CPU": 0.0, "GPU": 0.0}]
    for group, container in zip(cluster["workerGroupSpecs"], ray_containers(job)[1:], strict=True):
        limits = container["resources"]["limits"]
        nodes += [{"CPU": quantity(limits["cpu"]),
                   "GPU": quantity(limits.get("nvidia.com/gpu", 0))}] * group["minReplicas"]
    assert args.gpus_per_trial > 0, "the search would train on the workers' CPUs"
    check_resources(args.cpus_per_trial, args.gpus_per_trial, nodes)


def test_the_workers_request_gpus_and_every_ray_container_is_sized():
    job = manifest()
    for container in ray_containers(job):
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        for key in ("cpu", "memory"):
            assert quantity(requests[key]) == quantity(limits[key]) > 0, (container["name"], key)
    workers = ray_containers(job)[1:]
    assert workers and all(quantity(w["resources"]["limits"]["nvidia.com/gpu"]) >= 1
                           for w in workers)


def test_the_run_is_bounded_and_its_cluster_goes_away():
    """--time-budget stops the trials gracefully (leaderboard written) well before KubeRay's
    activeDeadlineSeconds stops the whole run, which also spans the cluster's start; and the
    cluster, GPUs and all, is deleted minutes after the job ends."""
    from search.checks import parse_duration

    job = manifest()
    _, _, args = entrypoint_args(job)
    budget = parse_duration(args.time_budget)
    assert budget and job["spec"]["activeDeadlineSeconds"] >= budget + 1800
    assert job["spec"]["shutdownAfterJobFinishes"]
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 900
    assert job["spec"]["backoffLimit"] == 0, "a retry reruns the same --name, which exits 2"


def test_storage_credentials_come_from_a_secret():
    """Every Ray container (each node writes its own checkpoints) reads the keys from a Secret,
    and nothing that looks like a credential is written in the manifest."""
    for container in ray_containers(manifest()):
        env = {e["name"]: e for e in container.get("env", [])}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[name].get("valueFrom", {}).get("secretKeyRef", {})
            assert ref.get("name") and ref.get("key"), (container["name"], name)
        inline = [n for n, e in env.items() if SECRET_NAME.search(n) and "value" in e]
        assert not inline, (container["name"], inline)


def dockerfile() -> tuple[str, list[str]]:
    """The Dockerfile's instructions, continued lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    return "\n".join(lines), lines


def test_the_image_is_this_project_on_cuda_pytorch_with_the_manifests_ray():
    """Every pod runs the one image k8s/Dockerfile builds, under the name docs/cluster.md builds
    it with: a CUDA PyTorch base, this project installed, and the Ray that rayVersion names and
    this project is tested with."""
    job = manifest()
    images = {c["image"] for c in ray_containers(job)}
    assert len(images) == 1, images
    (image,) = images
    built = re.search(r"docker build -f k8s/Dockerfile -t (\S+) \.",
                      (ROOT / "docs" / "cluster.md").read_text())
    assert built and built.group(1) == image, "docs/cluster.md builds another image name"
    assert image.rsplit(":", 1)[0].endswith("/transfer-search"), image

    text, lines = dockerfile()
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(bases) == 1 and re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-\S+", bases[0])
    assert re.search(r"\bpip install\b[^\n]*\s\"?\.\[serve\]\"?(\s|$)", text), \
        "the project is not installed, with the serve extra k8s/rayservice.yaml needs"
    pins = re.findall(r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)", text)
    rayversion = job["spec"]["rayClusterSpec"]["rayVersion"]
    assert pins and set(pins) == {rayversion} == {ray.__version__}, (pins, rayversion)


def test_the_image_holds_what_pip_and_the_entrypoint_need():
    """Each package pyproject installs is copied in, and the entrypoint's run.py is where the
    image's working directory puts it."""
    _, lines = dockerfile()
    copied = {word.rstrip("/") for line in lines if line.startswith("COPY ")
              for word in line.split()[1:-1] if not word.startswith("--")}
    pyproject = (ROOT / "pyproject.toml").read_text()
    found = yaml.safe_load(re.search(r"\[tool\.setuptools\.packages\.find\][^\[]*?"
                                     r"include = (\[[^\]]*\])", pyproject).group(1))
    packages = {name.split(".")[0] for name in found}
    assert packages | {"pyproject.toml", "README.md"} <= copied, sorted(copied)
    (workdir,) = [line.split()[1] for line in lines if line.startswith("WORKDIR ")]
    _, script, _ = entrypoint_args(manifest())
    assert script == f"{workdir}/search/run.py"
