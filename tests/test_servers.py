"""Servers the product starts listen on loopback only, unless a flag says otherwise."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from search.checks import check_dashboard_host
from tests.helpers import marked_json

ROOT = Path(__file__).resolve().parents[1]

# run.py's way of starting a local Ray, then every listening socket of the driver and of the
# processes Ray started for it
LISTENERS = """
import json, psutil, ray
from search.resources import ray_target
context = ray.init(**ray_target(None, "127.0.0.1"), include_dashboard=True)
ray.get(ray.remote(lambda: 1).remote())  # a worker process, with its own server
me = psutil.Process()
pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
found = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
         for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids]
print("REPORT", json.dumps({"listeners": found, "dashboard": context.dashboard_url}))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    with tempfile.TemporaryDirectory(prefix="rs", dir="/tmp") as short:  # AF_UNIX: 107 bytes
        result = subprocess.run([sys.executable, "-c", LISTENERS], cwd=ROOT, text=True,
                                capture_output=True, timeout=180, env={**env, "RAY_TMPDIR": short})
    assert result.returncode == 0, result.stderr[-3000:]
    report = marked_json(result.stdout, "REPORT")
    names = {name for _, _, name in report["listeners"]}
    assert {"gcs_server", "raylet"} <= names, names  # the servers were found at all
    public = [(ip, port, name) for ip, port, name in report["listeners"]
              if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not public, f"listening beyond this machine: {public}"
    assert report["dashboard"].startswith("127.0.0.1:")


def test_binding_the_dashboard_elsewhere_warns(capsys):
    check_dashboard_host("127.0.0.1")
    assert capsys.readouterr().out == ""
    check_dashboard_host("0.0.0.0")
    out = capsys.readouterr().out
    assert out.startswith("warning: --dashboard-host 0.0.0.0") and "RAY_AUTH_MODE=token" in out
