"""A real two-node Ray cluster on this machine: a head and a worker started with `ray start`, as
on a cluster, each with one CPU, so a search's trials must use both.

- A worker that cannot see the local `--storage` (its own mount namespace with a tmpfs over the
  path, as a machine without the shared filesystem) is found before the search: exit 2.
- A search's trials land on both nodes (each epoch's result records the node that trained it),
  and killing the worker node mid-search (SIGKILL to its raylet and workers) still finishes
  every trial: the lost one restarts from its checkpoint on the head (`--max-failures`).

Each node runs `ray start --block` in a session of its own, so killing that session is a node
lost, and other Ray instances on the machine are left alone. The GCS is told to declare a node
dead after ~3 s instead of ~30 s. Slow: starts three nodes and runs a search.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import TINY_MODEL, free_port, marked_json

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # timing-sensitive: run alone

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
FAST_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
ENV: dict[str, str] = {}  # the cluster's token authentication, for its nodes and drivers


class Node:
    """`ray start --block` in its own session; `kill` loses the node as a crashed machine would."""

    def __init__(self, args: list[str], prefix: tuple[str, ...] = (), log: Path | None = None):
        self.log = log
        out = log.open("w") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [*prefix, str(RAY), "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
             "--disable-usage-stats", *args],
            start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **FAST_DEATH, **ENV})

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)


def alive_nodes(address: str) -> list[dict]:
    """[{id, head}] of the cluster's live nodes, asked from a driver of its own."""
    script = ("import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); "
              "print('NODES', json.dumps([{'id': n['NodeID'], 'head': 'node:__internal_head__' in "
              "n['Resources']} for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", script, address], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **ENV})
    assert out.returncode == 0, out.stderr[-2000:]
    return marked_json(out.stdout, "NODES")


def wait_for_nodes(address: str, count: int, timeout_s: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = alive_nodes(address)
        if len(nodes) == count:
            return nodes
        assert time.monotonic() < deadline, f"{len(nodes)} live nodes, not {count}"
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, the worker Node, the worker's node id, a storage folder both nodes see)."""
    root = tmp_path_factory.mktemp("cluster")
    # as on a real cluster, token authentication: a driver passing --address needs the token
    (root / "token").write_text(secrets.token_hex(32))
    # Ray's sessions and its address file in a folder of the cluster's own (short: Ray's socket
    # paths must fit in 107 bytes): in /tmp/ray, the address file would make every later
    # ray.init() on this machine try to join this cluster, long after it is gone
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "token"),
               RAY_TMPDIR=ray_tmp)
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = Node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                 "--include-dashboard", "false"], log=root / "head.log")
    nodes: list[Node] = [head]
    try:
        wait_for_nodes(address, 1)
        worker = Node(["--address", address, "--node-ip-address", "127.0.0.1"],
                      log=root / "worker.log")
        nodes.append(worker)
        (worker_id,) = [n["id"] for n in wait_for_nodes(address, 2) if not n["head"]]
        yield address, worker, worker_id, root / "experiments"
    finally:
        for node in reversed(nodes):
            node.kill()
        ENV.clear()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def search(address: str, storage: Path, name: str, *args: str, background: bool = False):
    command = [sys.executable, str(ROOT / "search" / "run.py"), "--strategy", "scratch",
               "--data", "demo:8", "--backbone", TINY_MODEL, "--cpus-per-trial", "1",
               "--address", address, "--storage", str(storage), "--name", name,
               "--cache-dir", str(storage.parent / "cache"), *args]
    if background:  # its output to files: a full pipe would stall it
        return subprocess.Popen(command, stdout=(storage.parent / f"{name}.out").open("w"),
                                stderr=(storage.parent / f"{name}.err").open("w"),
                                env={**os.environ, **ENV})
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV})


def epoch_nodes(exp_dir: Path) -> dict[str, list[str]]:
    """Each trial's node id per reported epoch, from Tune's result.json."""
    out = {}
    for result in sorted((exp_dir / "scratch").glob("trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out[result.parent.name] = [r["node_id"] for r in rows]
    return out


def test_storage_a_node_cannot_see_is_refused_before_the_search(cluster, tmp_path):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to give a node a mount namespace of its own")
    address, _, _, _ = cluster
    storage = tmp_path / "local-only"
    storage.mkdir()
    blind = Node(["--address", address, "--node-ip-address", "127.0.0.1"],
                 prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c",
                         f'mount -t tmpfs tmpfs "{storage}" && exec "$0" "$@"'),
                 log=tmp_path / "blind.log")
    try:
        wait_for_nodes(address, 3)
        started = time.monotonic()
        run = search(address, storage, "unseen", "--samples", "2", "--max-epochs", "1")
        assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
        assert f"--storage {storage} is on this machine only" in run.stderr
        assert "s3://" in run.stderr and "Traceback" not in run.stderr
        assert time.monotonic() - started < 120
        assert list(storage.iterdir()) == []  # no experiment, no marker left behind
    finally:
        blind.kill()
        wait_for_nodes(address, 2)


def test_trials_run_on_both_nodes_and_survive_losing_the_worker(cluster):
    """Trials of up to 12 epochs, longer than a trial actor takes to start: a reused actor on
    the head would otherwise take every trial before the worker's actor is up."""
    address, worker, worker_id, storage = cluster
    exp_dir = storage / "node-lost"
    driver = search(address, storage, "node-lost", "--data", "demo:100", "--samples", "3",
                    "--max-epochs", "12", "--scheduler", "fifo", "--max-failures", "3",
                    background=True)
    try:
        deadline = time.monotonic() + 300
        while len({n for epochs in epoch_nodes(exp_dir).values() for n in epochs}) < 2:
            assert driver.poll() is None, "the search ended before using both nodes"
            assert time.monotonic() < deadline, "trials not on both nodes within 300 s"
            time.sleep(0.5)
        worker.kill()  # mid-trial: its next epochs must come from its checkpoint, on the head
        driver.wait(600)
    finally:
        if driver.poll() is None:
            driver.kill()
    stdout, stderr = ((storage.parent / f"node-lost.{s}").read_text() for s in ("out", "err"))
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    outcomes = json.loads((exp_dir / "trials.json").read_text())["scratch"]
    assert len(outcomes) == 3 and not any(o["errored"] for o in outcomes), outcomes
    nodes = epoch_nodes(exp_dir)
    assert worker_id in {n for epochs in nodes.values() for n in epochs}, nodes
    assert all(len(epochs) >= 12 for epochs in nodes.values()), nodes  # every epoch trained
    moved = [t for t, epochs in nodes.items() if worker_id in epochs and epochs[-1] != worker_id]
    assert moved, nodes  # the trial the lost node was training finished on the head
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert board.loc[0, "trials"] == 3 and board.loc[0, "errored"] == 0
