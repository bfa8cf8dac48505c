"""End what is left of a run's local Ray instance once the run's driver has gone.

    python -m search.reaper DRIVER_PID RAY_PID:START [RAY_PID:START ...]

A driver that starts a local Ray instance (`ray.init(address="local")`) starts its processes:
GCS, raylet, dashboard, log monitor, and through them the raylet's agents and workers. A clean
exit stops them (`ray.shutdown`), and Ray makes the GCS and the raylet die with a killed driver;
but in Ray 2.60 the raylet's DashboardAgent and RuntimeEnvAgent, which notice that the raylet
died and ask themselves to exit, can stay alive for minutes or for good, and each driver killed
with SIGKILL (the OOM killer, a scheduler's timeout) leaves two more.

So a driver that starts a local instance also starts this watcher, in a session of its own (a
signal to the driver's process group leaves it alone), given the processes `ray.init` started
(`init_ray` tells them from the driver's other children). While the driver and the instance
live, it notes those processes and every process descended from them, once a second, by pid
and start time (never to be confused with a later process that reuses the pid); nothing else
the driver runs is noted. When the driver or the instance has gone, it gives Ray's own stop
GRACE_S seconds, then sends SIGTERM to every noted process still alive, and SIGKILL to any left
after TERM_WAIT_S. Linux only: it reads /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")
POLL_S = 1.0
GRACE_S = 10.0
TERM_WAIT_S = 5.0

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)


def stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a process, or None if there is none."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces and parentheses: split after the last
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process."""
    table = {}
    for entry in os.listdir(PROC):
        if entry.isdigit() and (info := stat(int(entry))) is not None and info[2] != "Z":
            table[int(entry)] = info[:2]
    return table


def descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[Process]:
    """Every process in `table` descended from one of the `roots` pids."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [child for root in roots for child in children.get(root, ())]
    while stack:
        pid = stack.pop()
        found.add((pid, table[pid][1]))
        stack.extend(children.get(pid, ()))
    return found


def alive(process: Process) -> bool:
    info = stat(process[0])
    return info is not None and info[1] == process[1] and info[2] != "Z"


def children(pid: int) -> set[Process]:
    """The live processes whose parent is `pid`."""
    return {(child, start) for child, (parent, start) in process_table().items()
            if parent == pid}


def watch(driver: Process, roots: set[Process], poll_s: float = POLL_S) -> set[Process]:
    """The roots and every process descended from them, noted while the driver and some root
    live."""
    seen = set(roots)
    while alive(driver) and (live := {pid for pid, start in roots if alive((pid, start))}):
        seen |= descendants(live, process_table())
        time.sleep(poll_s)
    return seen


def end(processes: set[Process], grace_s: float = GRACE_S,
        term_wait_s: float = TERM_WAIT_S) -> list[int]:
    """SIGTERM, then SIGKILL, to the processes still alive after `grace_s`; returns the pids
    that had to be signalled."""
    deadline = time.monotonic() + grace_s
    while (left := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 0.0)):
        for pid, _ in (p for p in left if alive(p)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while any(alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.2)
    return [pid for pid, _ in left]


def start_reaper(ray_processes: set[Process]) -> None:
    """Watch the local Ray instance `ray_processes` started for this driver (Linux only)."""
    if not ray_processes or not (PROC / "self" / "stat").is_file():
        return
    subprocess.Popen([sys.executable, "-m", "search.reaper", str(os.getpid()),
                      *(f"{pid}:{start}" for pid, start in sorted(ray_processes))],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def main(argv: list[str]) -> int:
    info = stat(int(argv[0]))
    if info is None:
        return 0
    roots = {(int(pid), int(start)) for pid, start in (a.split(":") for a in argv[1:])}
    end(watch((int(argv[0]), info[1]), roots))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
