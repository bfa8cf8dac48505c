"""Resource requests checked against the Ray cluster before any trial is queued.

Ray queues a trial whose request no node can meet and waits for it forever (an autoscaler may
add such a node one day). Here a request that no live node can hold fails at once, with the
largest node's resources in the message.
"""

from __future__ import annotations

import ray


class ResourceError(RuntimeError):
    """A per-trial request no node of the cluster can satisfy; the message names the fix."""


def node_resources() -> list[dict[str, float]]:
    """CPU and GPU of each live node of the connected cluster."""
    return [{"CPU": n["Resources"].get("CPU", 0.0), "GPU": n["Resources"].get("GPU", 0.0)}
            for n in ray.nodes() if n.get("Alive")]


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
