"""What the cluster must offer before any trial is queued: resources, and storage every node
reaches.

Ray queues a trial whose request no node can meet and waits for it forever. Here a request that
no live node, and no node type the cluster launcher may add, can hold fails at once, with the
largest node's resources in the message. And since Ray 2.7 every node writes its trials'
checkpoints to `--storage` itself, so on a multi-node cluster a path that only the driver's
machine sees fails each remote trial at its first checkpoint; it is refused before the search.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import ray
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# written by `ray up` on the head; Ray Tune reads the same file to tell an autoscaling cluster
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")
REACH_TIMEOUT_S = 60


class ResourceError(RuntimeError):
    """A per-trial request no node of the cluster can satisfy; the message names the fix."""


def node_resources() -> list[dict[str, float]]:
    """CPU and GPU of each live node of the connected cluster, and of each node type the
    cluster launcher may start (an autoscaling GPU worker group with no node up yet)."""
    live = [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes() if n.get("Alive")]
    return live + launcher_node_types(LAUNCHER_CONFIG.expanduser())


def launcher_node_types(config_file: Path) -> list[dict[str, float]]:
    if not config_file.is_file():
        return []
    config = yaml.safe_load(config_file.read_text()) or {}
    types = config.get("available_node_types") or {}
    return [{"CPU": float(t.get("resources", {}).get("CPU", 0)),
             "GPU": float(t.get("resources", {}).get("GPU", 0))}
            for name, t in types.items()
            if name != config.get("head_node_type") and t.get("max_workers", 0) > 0]


def check_resources(cpus: float, gpus: float, nodes: list[dict[str, float]]) -> None:
    """Raise ResourceError unless one node has `cpus` CPUs and `gpus` GPUs free in total."""
    if any(n["CPU"] >= cpus and n["GPU"] >= gpus for n in nodes):
        return
    most_cpu = max((n["CPU"] for n in nodes), default=0)
    most_gpu = max((n["GPU"] for n in nodes), default=0)
    raise ResourceError(
        f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}: no node of this Ray cluster "
        f"has that much (its largest node: {most_cpu:g} CPUs, {most_gpu:g} GPUs; {len(nodes)} "
        "node(s)); ask for less per trial, or start a node that has it")


@ray.remote(num_cpus=0)
def _sees(path: str) -> tuple[bool, str]:
    return os.path.exists(path), ray.util.get_node_ip_address()


def check_storage_reach(storage: Path, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Raise ResourceError if a live node of the cluster cannot see the local `storage` folder:
    a marker written here is looked for by a task pinned to each node."""
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    created = not storage.exists()
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".reach-{uuid.uuid4().hex}"
    marker.touch()
    try:
        refs = [_sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(str(marker)) for node in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            raise ResourceError(f"--storage {storage}: {len(refs) - len(ready)} of {len(refs)} "
                                f"nodes did not answer within {timeout_s:g} s whether they see "
                                "it; check the cluster with `ray status`")
        blind = sorted({ip for seen, ip in ray.get(ready) if not seen})
    finally:
        marker.unlink(missing_ok=True)
        if created:
            storage.rmdir()
    if blind:
        raise ResourceError(
            f"--storage {storage} is on this machine only: node(s) {', '.join(blind)} of this "
            "cluster cannot see it, and every node writes its trials' checkpoints there; pass "
            "--storage s3://bucket/prefix (or gs://...), or a path that every node mounts at "
            "the same place (NFS)")


def ray_target(address: str | None, dashboard_host: str | None = None) -> dict:
    """ray.init's arguments: the cluster asked for; else RAY_ADDRESS (set by `ray job submit`);
    else a new local instance, not whatever cluster last ran on this machine, every server of
    it on loopback and its dashboard (if any) on `dashboard_host`."""
    if address or os.environ.get("RAY_ADDRESS"):
        return {"address": address}
    listen_on_loopback()
    if dashboard_host is None:
        return {"address": "local"}
    from search.checks import check_dashboard_host

    check_dashboard_host(dashboard_host)
    return {"address": "local", "dashboard_host": dashboard_host}


def init_ray(address: str | None, dashboard_host: str | None = None, dashboard: bool = True,
             **kwargs):
    """ray.init on `ray_target(address, dashboard_host)`; returns Ray's context. A local
    instance started here has a dashboard unless `dashboard` is False, and is watched by
    search/reaper.py, which ends what is left of it once this process has gone, even killed
    with SIGKILL."""
    from search import reaper

    target = ray_target(address, dashboard_host if dashboard else None)
    local = target["address"] == "local"
    if local and not dashboard:  # a cluster's dashboard is its own: Ray refuses the argument
        kwargs["include_dashboard"] = False
    others = reaper.children(os.getpid()) if local else set()
    with token_notice_dropped(local):
        context = ray.init(**target, **kwargs)
    if local:  # what ray.init started: the driver's new children
        reaper.start_reaper(reaper.children(os.getpid()) - others)
    return context


# Ray (2.60) turns token auth on for each new local instance and logs a WARNING saying so, with
# advice to opt out, on every start; the run's dashboard line already says the token is needed.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


class TokenNoticeFilter(logging.Filter):
    """Drops Ray's token-auth-enabled notice and passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_NOTICE)


@contextmanager
def token_notice_dropped(local: bool):
    """While a local instance starts, Ray's notice is dropped. Joining a cluster keeps it: Ray
    logs it there (--address auto) when it takes up a token it found, which the user should
    know."""
    logger, notice = logging.getLogger(TOKEN_NOTICE_LOGGER), TokenNoticeFilter()
    if local:
        logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def listen_on_loopback() -> None:
    """Every server of a local Ray instance (GCS, raylet, workers, agents, metrics) on
    127.0.0.1. Ray binds them to the node's IP, a routable one on Linux, unless its
    single-machine mode (the one it uses on macOS and Windows) is on; that mode makes the node
    IP 127.0.0.1. The variable reaches Ray's processes; the constant, read when ray was
    imported, is set for this one. A user who sets the variable to 1 keeps Ray's default."""
    if os.environ.get(LOOPBACK_ENV, "0") != "0":
        return
    os.environ[LOOPBACK_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
