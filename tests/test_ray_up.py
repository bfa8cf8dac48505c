"""`ray up` for real: cluster-local.yaml, filled in for this machine, starts a one-node cluster
with Ray's local node provider over SSH; `ray submit` runs a two-trial search on it with
`--address auto`; `ray down` stops it, and the head is gone.

The test brings its own SSH: a key pair, and an sshd with its own config and host key on a free
loopback port. Ray's SSH runner has no port option, so Ray reaches that port through
auth.ssh_proxy_command, a small relay. Beyond that the cluster runs exactly as the YAML says:
its setup commands put the project's environment on PATH through ~/.bashrc (a login shell here
has no `ray` or `python` otherwise), its start commands `ray stop` and `ray start --head`.

Isolation, so that the test can run beside other Ray users on the machine:
- sshd is PID 1 of a new PID namespace. `ray stop`, run by the start commands and by `ray down`,
  kills every Ray process it can see: in there it sees only this cluster's. Killing sshd at the
  end (also when pytest itself is killed) takes every process left in there with it, which is
  this test's `ray stop --force`.
- sshd gives its sessions a HOME and a RAY_TMPDIR of the test's own: the ~/.bashrc line, ray
  up's ~/ray_bootstrap_* files, `ray submit`'s ~/run.py, Ray's sessions and its address file
  stay out of root's home and /tmp/ray, so no other `ray.init()` joins this cluster. The `ray`
  CLI runs with the same RAY_TMPDIR (its cluster state file) and TMPDIR (its config cache).
- Ray's, the dashboard's and sshd's ports are free ones.
Slow: about a minute. Needs root, sshd, ssh and rsync (.ci/run installs them).
"""

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from tests.helpers import TINY_MODEL, free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
PLACEHOLDER_VENV = "/opt/transfer-search/.venv"  # what cluster-local.yaml asks to fill in

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # timing-sensitive: run alone

# ssh's ProxyCommand: stdin and stdout to and from sshd's port. Its stderr goes to /dev/null at
# once: ssh's ControlPersist master keeps the relay alive for 10 s after a `ray` command exits,
# and the inherited stderr would keep subprocess.run waiting for it.
RELAY = """\
import os, socket, sys, threading
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def upstream():
    while data := os.read(0, 65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := conn.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


def text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def run(cmd: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run to the end, or fail the test after `timeout` seconds with what it printed."""
    cmd = [str(c) for c in cmd]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(cmd)}` took over {timeout} s:\n{text(exc.stdout)[-4000:]}\n"
                    f"{text(exc.stderr)[-4000:]}")


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def die_with_parent() -> None:
    """In the child: SIGKILL when pytest dies, and unshare --kill-child passes it on to sshd."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


class Sshd:
    """Our own sshd on a free loopback port, PID 1 of a new PID namespace."""

    def __init__(self, tmp: Path, ray_tmp: Path):
        self.port = free_port()
        self.key = tmp / "id_ed25519"
        self.home = tmp / "home"  # the sessions' HOME
        self.ray_tmp = ray_tmp
        self.log = tmp / "sshd.log"
        self.home.mkdir()
        for key in (self.key, tmp / "host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test_ray_up",
                            "-f", str(key)], check=True, timeout=30)
        shutil.copy(f"{self.key}.pub", tmp / "authorized_keys")
        (tmp / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
            f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPidFile none\nPrintMotd no\nPrintLastLog no\n"
            f"SetEnv HOME={self.home} RAY_TMPDIR={ray_tmp}\n")
        (tmp / "relay.py").write_text(RELAY)
        self.proxy_command = f"{sys.executable} {tmp / 'relay.py'} {self.port}"
        # sshd refuses to start without its privilege separation directory, which its service
        # makes (and no service runs in a container)
        self.made_run_dir = not Path("/run/sshd").exists()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                 sshd, "-D", "-e", "-f", str(tmp / "sshd_config")],
                stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent)
        self.pid = self.wait_until_listening()  # sshd's, as this namespace sees it

    def wait_until_listening(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return psutil.Process(self.proc.pid).children()[0].pid
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"sshd not listening on port {self.port} after 20 s:\n{self.log.read_text()}")

    def processes(self) -> list[str]:
        """The names of the processes in sshd's PID namespace, other than sshd's."""
        namespace = os.readlink(f"/proc/{self.pid}/ns/pid")
        names = []
        for proc in psutil.process_iter(["name"]):
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/pid") == namespace:
                    names.append(proc.info["name"])
            except OSError:  # gone meanwhile
                pass
        return [name for name in names if name != "sshd"]

    def stop(self) -> None:
        """Kill sshd: as its namespace's PID 1, it takes every process in there with it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if self.made_run_dir:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")


@pytest.fixture
def sshd(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: its own sshd, a PID namespace, ssh to root@127.0.0.1")
    missing = [c for c in ("sshd", "ssh", "ssh-keygen", "rsync")
               if not shutil.which(c) and not Path("/usr/sbin", c).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: apt-get install openssh-server "
                    "openssh-client rsync (as .ci/run does)")
    probe = run(["unshare", "--pid", "--fork", "--mount-proc", "true"], timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rayup-"))  # short: Ray's sockets go in there
    server = None
    try:
        server = Sshd(tmp_path, ray_tmp)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def cluster_config(tmp_path: Path, sshd: Sshd, name: str, gcs_port: int) -> Path:
    """cluster-local.yaml, filled in for root@127.0.0.1 through the test's sshd."""
    config = yaml.safe_load((ROOT / "cluster-local.yaml").read_text())
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(sshd.key),
                      "ssh_proxy_command": sshd.proxy_command}
    setup = config["setup_commands"]
    assert any(PLACEHOLDER_VENV in c for c in setup), f"no {PLACEHOLDER_VENV} in {setup}"
    config["setup_commands"] = [c.replace(PLACEHOLDER_VENV, sys.prefix) for c in setup]
    head = config["head_start_ray_commands"]
    assert any("--port=6379" in c for c in head), head
    ports = (f"--port={gcs_port} --dashboard-port={free_port()} "
             f"--ray-client-server-port={free_port()}")
    config["head_start_ray_commands"] = [c.replace("--port=6379", ports) for c in head]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_ray_up_submit_and_down(tmp_path, sshd):
    name = f"test-ray-up-{uuid.uuid4().hex[:8]}"
    gcs_port = free_port()
    config = cluster_config(tmp_path, sshd, name, gcs_port)
    env = {**os.environ, "RAY_TMPDIR": str(sshd.ray_tmp), "TMPDIR": str(sshd.ray_tmp),
           "RAY_USAGE_STATS_ENABLED": "0", "AUTOSCALER_NODE_START_WAIT_S": "60"}  # for SSH
    storage = tmp_path / "experiments"
    down = False
    try:
        result = run([RAY, "up", "-y", config, "--no-config-cache"], timeout=240, env=env)
        assert result.returncode == 0, (f"ray up failed: {output(result)}\n"
                                        f"sshd's log:\n{sshd.log.read_text()[-2000:]}")
        assert "transfer-search environment with Ray" in result.stdout  # the setup commands
        running = sshd.processes()
        assert {"raylet", "gcs_server"} <= set(running), running
        status = run([RAY, "status", "--address", f"127.0.0.1:{gcs_port}"], timeout=60, env=env)
        assert status.returncode == 0 and "CPU" in status.stdout, output(status)

        result = run([RAY, "submit", config, "--no-config-cache", ROOT / "search" / "run.py",
                      "--", "--strategy", "scratch", "--samples", "2", "--max-epochs", "1",
                      "--data", "demo:8", "--backbone", TINY_MODEL, "--cpus-per-trial", "1",
                      "--address", "auto", "--storage", storage, "--name", "remote",
                      "--cache-dir", tmp_path / "cache"], timeout=300, env=env)
        assert result.returncode == 0, f"ray submit failed: {output(result)}"
        assert (sshd.home / "run.py").is_file()  # ray submit's copy, which the head ran
        exp_dir = storage / "remote"
        trials = json.loads((exp_dir / "trials.json").read_text())["scratch"]
        assert len(trials) == 2 and not any(t["errored"] for t in trials), trials
        board = pd.read_csv(exp_dir / "leaderboard.csv").set_index("strategy")
        assert board.loc["scratch", "trials"] == 2, board

        result = run([RAY, "down", "-y", config], timeout=120, env=env)
        down = True
        assert result.returncode == 0, f"ray down failed: {output(result)}"
        deadline = time.monotonic() + 30
        while (left := sshd.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray processes left after ray down: {left}\n{output(result)}"
        with pytest.raises(OSError):  # nothing listens on the head's port any more
            socket.create_connection(("127.0.0.1", gcs_port), timeout=5).close()
    finally:
        if not down:  # sshd's end kills what a failed or hung `ray down` leaves
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([RAY, "down", "-y", config], capture_output=True, timeout=120,
                               env=env)
        # ssh's shared connection of the cluster, /tmp/ray_ssh_<user hash>/<cluster hash>
        cluster_hash = hashlib.sha256(name.encode()).hexdigest()[:10]
        for control_dir in Path("/tmp").glob(f"ray_ssh_*/{cluster_hash}"):
            shutil.rmtree(control_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # when no other cluster's is in there
                control_dir.parent.rmdir()
