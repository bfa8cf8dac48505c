"""Where the Optuna studies live: the experiment's own SQLite file, or a storage many drivers share.

By default each experiment keeps its studies in `<experiment>/optuna.db`. `--optuna-storage URL`
puts them in a storage that drivers on other machines (or other processes on this one) can join:
a PostgreSQL or MySQL server, or Optuna's journal file (`journal:PATH`), which needs no server.

`check_storage_url` runs while the CLI is checked, so it imports neither optuna nor sqlalchemy;
optuna is imported only when a storage is opened.
"""

from __future__ import annotations

import importlib.util
import math
import re
import shlex
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from search.options import UsageError

if TYPE_CHECKING:
    import optuna

ACCEPTED = ("sqlite:///PATH, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, "
            "mysql://USER[:PASSWORD]@HOST[:PORT]/DB, or journal:PATH")

# URL scheme -> (the scheme it is opened with, the driver module it needs, the extra installing it).
# The driver is spelled out because SQLAlchemy's default ones are not what the extras install:
# plain postgresql:// means psycopg 3 since SQLAlchemy 2.1, and mysql:// means MySQLdb.
RDB_SCHEMES = {
    "postgresql": ("postgresql+psycopg2", "psycopg2", "postgres"),
    "postgresql+psycopg2": ("postgresql+psycopg2", "psycopg2", "postgres"),
    "mysql": ("mysql+pymysql", "pymysql", "mysql"),
    "mysql+pymysql": ("mysql+pymysql", "pymysql", "mysql"),
}

# user:PASSWORD@ (up to the last @: an unescaped @ in a password is never half shown) and
# ?password=..., the two places a database URL carries a password
_URL_PASSWORD = re.compile(r"^([\w+]+://[^:/@]*:)(.*)(@)")
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&]*)")


class StorageError(RuntimeError):
    """The Optuna storage could not be opened; the message is one line with the fix."""


def check_storage_url(text: str) -> str:
    """The --optuna-storage value, checked and normalised (absolute file paths, the driver
    spelled out), or a UsageError naming the fix: found before Ray starts or anything is written.
    """
    scheme, _, rest = text.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "journal":
        return f"journal:{file_path(rest, text)}"
    if scheme == "sqlite":
        return sqlite_url(rest, text)
    if scheme in RDB_SCHEMES and rest.startswith("//") and len(rest) > 2:
        if url_passwords(text):  # Ray pickles the storage, URL and all, into the experiment
            raise UsageError(
                f"--optuna-storage {mask_password(text)}: a password in the URL would be saved "
                "in the experiment's files; leave it out and give it through PGPASSWORD or "
                "~/.pgpass (PostgreSQL), or read_default_file=~/.my.cnf (MySQL)")
        _, module, extra = RDB_SCHEMES[scheme]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--optuna-storage {mask_password(text)}: the {module} driver "
                                  f'is not installed: pip install "transfer-search[{extra}]"')
        return with_driver(f"{scheme}:{rest}")
    hint = " (SQLAlchemy spells it postgresql://)" if scheme == "postgres" else ""
    raise UsageError(f"--optuna-storage {mask_password(text)}: not a storage URL this "
                          f"search can use{hint}; expected {ACCEPTED}")


def is_server(url: str) -> bool:
    """Whether a checked --optuna-storage URL names a database server (not a file)."""
    return url.partition(":")[0].lower() in RDB_SCHEMES


def with_driver(url: str) -> str:
    """A database URL with the driver the extras install spelled out (see RDB_SCHEMES)."""
    scheme, colon, rest = url.partition(":")
    if scheme.lower() in RDB_SCHEMES:
        return f"{RDB_SCHEMES[scheme.lower()][0]}{colon}{rest}"
    return url


def sqlite_url(rest: str, text: str) -> str:
    """sqlite:///PATH with PATH made absolute; an in-memory database is refused, since no other
    driver (nor Ray's copy of the searcher) could ever see its studies."""
    if not rest.startswith("///"):
        raise UsageError(f"--optuna-storage {text}: expected sqlite:///PATH (three slashes, "
                              "then the file; four for an absolute path)")
    path, query_mark, query = rest[3:].partition("?")
    if path == ":memory:":
        raise UsageError(f"--optuna-storage {text}: an in-memory database cannot be "
                              "shared; give a file: sqlite:///PATH")
    return f"sqlite:///{file_path(path, text)}{query_mark}{query}"


def file_path(text: str, flag: str) -> Path:
    """A storage file's absolute path, in a directory that exists: a typo in it is found now,
    not after the pretraining stages ran."""
    if not text:
        raise UsageError(f"--optuna-storage {flag}: no file given; expected {ACCEPTED}")
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise UsageError(f"--optuna-storage {flag}: {path} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise UsageError(f"--optuna-storage {flag}: {path.parent}: no such directory "
                              "(create it first)")
    return path


def default_url(exp_dir: Path) -> str:
    """The storage without --optuna-storage: the experiment's own SQLite file."""
    return f"sqlite:///{Path(exp_dir) / 'optuna.db'}"


def open_storage(url: str | None, exp_dir: Path, timeout_s: float = 10
                 ) -> optuna.storages.BaseStorage:
    """The storage the studies live in (None: exp_dir/optuna.db), opened and its tables made.

    A database server gets a connect timeout of timeout_s, so an unreachable one fails within
    seconds instead of hanging the driver; any failure to open is a one-line StorageError. What
    comes back pickles (Ray pickles the searcher that holds it) and reconnects when unpickled.
    """
    import optuna
    import sqlalchemy.exc

    target = with_driver(url or default_url(exp_dir))
    try:
        if target.startswith("journal:"):
            backend = optuna.storages.journal.JournalFileBackend(target.removeprefix("journal:"))
            return optuna.storages.JournalStorage(backend)
        return optuna.storages.RDBStorage(target, engine_kwargs=engine_kwargs(target, timeout_s))
    except (OSError, ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise StorageError(failure_message(target, exc)) from exc


def engine_kwargs(url: str, timeout_s: float) -> dict:
    """SQLAlchemy engine options: a bounded connect for database servers (libpq counts whole
    seconds and waits at least 2; PyMySQL's default is already 10); for SQLite files, the
    connection class that sets up write-ahead logging (see WalConnection). They are pickled with
    the storage, so Ray's copy of the searcher reconnects with the same options."""
    if url.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": max(1, math.ceil(timeout_s))}}
    if url.startswith("sqlite:"):
        return {"connect_args": {"factory": WalConnection}}
    return {}


class WalConnection(sqlite3.Connection):
    """A SQLite connection in write-ahead-log mode with synchronous=NORMAL.

    Optuna commits every write on its own (each suggested parameter, user attribute and
    report), ~25 a trial. In SQLite's default rollback mode each commit waits for fsync, about
    10 ms on an ordinary disk: a quarter of a second of driver time per trial, during which Tune
    starts no trial and handles no result. In WAL mode with synchronous=NORMAL a commit is an
    append to the log (~0.01 ms), synced only at checkpoints; the database cannot be corrupted,
    and a killed driver loses nothing (a power cut may lose the last commits). WAL needs every
    process on one host, which a SQLite study already does (other machines join a server or a
    journal file). `checkpoint` folds the log back into the file, so that a copy of the .db file
    alone holds every trial.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def checkpoint(storage: optuna.storages.BaseStorage | None) -> None:
    """Write a SQLite study's log into its .db file and empty the log: done after each strategy,
    before the experiment is uploaded or copied. Other storages need nothing."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def failure_message(url: str, exc: BaseException) -> str:
    """One line: which storage, the cause's first line (the driver's own error, not SQLAlchemy's
    wrapper), and what to do about it; the password masked in both."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    first = lines[0] if lines else type(cause).__name__
    for password in url_passwords(url):
        first = first.replace(password, "***")
    return f"cannot open the Optuna storage {mask_password(url)}: {first}; {storage_fix(url, exc)}"


def storage_fix(url: str, exc: BaseException) -> str:
    """What the user can do, by the kind of storage that failed."""
    if isinstance(exc, ImportError):
        return 'install its driver: pip install "transfer-search[postgres]" (or [mysql])'
    if url.startswith(("sqlite:", "journal:")):
        return "check that the file's directory exists and is writable"
    return ("start the database server, or check the host, port, user, password and database "
            "name in --optuna-storage")


def url_passwords(url: str) -> list[str]:
    """The passwords written in the URL (so that they can be masked in error text too)."""
    found = [_URL_PASSWORD.match(url), *_QUERY_PASSWORD.finditer(url)]
    return [match.group(2) for match in found if match and match.group(2)]


def mask_password(url: str) -> str:
    """The URL with its password (user:PASSWORD@ or ?password=) replaced by ***: what is printed
    and recorded, since experiment.json and logs get copied around."""
    masked = _URL_PASSWORD.sub(r"\1***\3", url, count=1)
    return _QUERY_PASSWORD.sub(r"\1***", masked)


def storage_label(url: str | None, exp_dir: Path) -> str:
    """The storage's URL to print and to record in experiment.json, password masked."""
    return mask_password(with_driver(url or default_url(exp_dir)))


def dashboard_command(url: str | None, exp_dir: Path) -> str:
    """The shell command that opens these studies in optuna-dashboard.

    A journal file is named with --storage-class, since the dashboard only guesses that a path
    is a journal once the file exists. A password is masked as ***, because the command is
    printed: the user puts it back (or, for PostgreSQL, drops ':***' and sets PGPASSWORD).
    """
    target = with_driver(url or default_url(exp_dir))
    if target.startswith("journal:"):
        args = ["--storage-class", "JournalFileStorage", target.removeprefix("journal:")]
    else:
        args = [mask_password(target)]
    return shlex.join(["optuna-dashboard", *args])
