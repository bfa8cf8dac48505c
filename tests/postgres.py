"""A throwaway PostgreSQL server on loopback, for tests that need a real database server.

`start_postgres(tmp_dir)` runs initdb into a fresh directory, starts the server on a free port of
127.0.0.1 with trust authentication (no password; nothing but this machine can reach it), creates
one database, and returns its URL and a function that stops the server. PostgreSQL refuses to run
as root, so under root the server runs as the `postgres` user. Every command has a timeout, so a
server that will not start fails the test instead of hanging it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.helpers import free_port

INSTALL_HINT = "install the PostgreSQL server: apt-get install postgresql"
DATABASE = "transfer_search"
SERVER_USER = "postgres"
TIMEOUT_S = 60
TOOLS = ("initdb", "pg_ctl", "createdb")


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine: the only reason to skip a test."""


def start_postgres(tmp_dir: Path) -> tuple[str, Callable[[], None]]:
    """(URL of a fresh database, stop) for a server whose files live in server_dir(tmp_dir)."""
    bin_dir, tmp_dir = server_bin_dir(), Path(tmp_dir)
    base = server_dir(tmp_dir)
    data, port = base / "data", free_port()

    def stop() -> None:
        run_as_server([bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop"],
                      base, check=False)
        if not base.is_relative_to(tmp_dir):
            shutil.rmtree(base, ignore_errors=True)

    # fsync off: a test database that dies with the test needs no durability, only speed
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
    try:
        run_as_server([bin_dir / "initdb", "-D", data, "-U", SERVER_USER, "--auth=trust",
                       "--no-locale", "--encoding=UTF8", "--no-sync"], base)
        run_as_server([bin_dir / "pg_ctl", "-D", data, "-l", base / "server.log", "-o", options,
                       "-w", "-t", "30", "start"], base)
        run([bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", SERVER_USER,
             DATABASE], base)
    except BaseException:
        stop()
        raise
    return f"postgresql://{SERVER_USER}@127.0.0.1:{port}/{DATABASE}", stop


def server_bin_dir() -> Path:
    """The folder with initdb, pg_ctl and createdb: the newest Debian server's, else initdb's on
    PATH (Debian keeps them out of PATH, in /usr/lib/postgresql/<version>/bin)."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    on_path = shutil.which("initdb")
    candidates = [Path(d) for d in reversed(debian)]
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in TOOLS):
            return candidate
    raise PostgresMissing(f"no PostgreSQL server binaries ({', '.join(TOOLS)}) in "
                          f"/usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT}")


def server_dir(tmp_dir: Path) -> Path:
    """tmp_dir/pg; under root, a new directory in the system's temp dir that the postgres user
    (created if missing) owns and can reach. Not under tmp_dir then: pytest makes its tmp root
    0700 and resets it so whenever another pytest session starts, which would lock the server
    user out of its files while a concurrent session runs."""
    if os.geteuid() != 0:
        (tmp_dir / "pg").mkdir(parents=True)
        return tmp_dir / "pg"
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", SERVER_USER], tmp_dir)
    account = pwd.getpwnam(SERVER_USER)
    base = Path(tempfile.mkdtemp(prefix="transfer-search-pg-"))
    os.chown(base, account.pw_uid, account.pw_gid)
    for parent in base.parents:  # a TMPDIR without o+x would keep the server user out
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    return base


def run_as_server(cmd: list, cwd: Path, check: bool = True) -> None:
    """Run a server command as the postgres user when we are root, else as ourselves."""
    prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
    run([*prefix, *cmd], cwd, check)


def run(cmd: list, cwd: Path, check: bool = True) -> None:
    """Run a command with a timeout; on failure raise with its output and the server's log."""
    cmd = [str(part) for part in cmd]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and done.returncode != 0:
        log = Path(cwd) / "server.log"
        log_tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}:\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}{log_tail}")
