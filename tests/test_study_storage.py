"""--optuna-storage: the URL check, opening each kind of storage, masking, pickling, failing fast
on an unreachable server, and a study shared through a real PostgreSQL server on loopback."""

import importlib.util
import pickle
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import search.study as study_module
from search.spec import UsageError
from search.study import (
    StorageError,
    check_storage_url,
    checkpoint,
    dashboard_command,
    open_storage,
    storage_label,
)
from tests.postgres import free_port

VALUES = [0.25, 0.5, 0.75]
REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def with_driver(monkeypatch):
    """Pretend every database driver is installed (pymysql is not, in the dev environment)."""
    monkeypatch.setattr(study_module.importlib.util, "find_spec", lambda name: object())


def tell_trials(storage, name: str) -> None:
    """A study with one trial per value in VALUES, x = value, objective = value."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for value in VALUES:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, value)


def assert_read_back(storage, name: str) -> None:
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.value for t in trials] == VALUES
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("given, expected", [
    ("postgresql://u@db.example:5432/studies",
     "postgresql+psycopg2://u@db.example:5432/studies"),
    ("postgresql+psycopg2://u@db/studies", "postgresql+psycopg2://u@db/studies"),
    ("PostgreSQL://u@db/studies", "postgresql+psycopg2://u@db/studies"),
    ("mysql://u@db/studies", "mysql+pymysql://u@db/studies"),
    ("mysql+pymysql://u@db/studies", "mysql+pymysql://u@db/studies"),
])
def test_check_accepts_database_urls(with_driver, given, expected):
    assert check_storage_url(given) == expected


def test_check_makes_file_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_storage_url("sqlite:///studies.db") == f"sqlite:///{tmp_path / 'studies.db'}"
    assert check_storage_url(f"sqlite:///{tmp_path}/s.db") == f"sqlite:///{tmp_path / 's.db'}"
    assert check_storage_url("journal:studies.log") == f"journal:{tmp_path / 'studies.log'}"
    assert check_storage_url(" journal:./a.log ") == f"journal:{tmp_path / 'a.log'}"


@pytest.mark.parametrize("given, fix", [
    ("", "expected sqlite:///PATH"),
    ("studies.db", "expected sqlite:///PATH"),
    ("redis://localhost:6379", "expected sqlite:///PATH"),
    ("postgres://u@db/studies", "SQLAlchemy spells it postgresql://"),
    ("postgresql+asyncpg://u@db/studies", "expected sqlite:///PATH"),
    ("postgresql://", "expected sqlite:///PATH"),
    ("sqlite://studies.db", "three slashes"),
    ("sqlite:///:memory:", "give a file"),
    ("postgresql://u:secret@db/studies", "give it through PGPASSWORD"),
    ("postgresql://db/studies?user=u&password=secret", "give it through PGPASSWORD"),
    ("journal:", "no file given"),
    ("journal:/no/such/dir/studies.log", "/no/such/dir: no such directory (create it first)"),
    ("sqlite:////no/such/dir/s.db", "/no/such/dir: no such directory (create it first)"),
])
def test_check_refuses_bad_urls_naming_the_fix(with_driver, given, fix):
    with pytest.raises(UsageError, match="^--optuna-storage ") as raised:
        check_storage_url(given)
    assert fix in str(raised.value) and "secret" not in str(raised.value)
    assert "\n" not in str(raised.value)


def test_check_refuses_a_directory(tmp_path):
    with pytest.raises(UsageError, match="is a directory; name a file in it"):
        check_storage_url(f"journal:{tmp_path}")


@pytest.mark.parametrize("url, extra", [
    ("postgresql://u@db/studies", "postgres"),
    ("postgresql+psycopg2://u@db/studies", "postgres"),
    ("mysql://u@db/studies", "mysql"),
    ("mysql+pymysql://u@db/studies", "mysql"),
])
def test_missing_driver_names_the_extra(monkeypatch, url, extra):
    monkeypatch.setattr(study_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError) as raised:
        check_storage_url(url)
    assert f'pip install "transfer-search[{extra}]"' in str(raised.value)


# the `postgres` extra (a dev dependency); a GPU machine's image may lack it
needs_psycopg2 = pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None,
                                    reason="psycopg2 is not installed: pip install -e '.[dev]'")


@needs_psycopg2
def test_check_imports_neither_optuna_nor_sqlalchemy():
    code = ("import sys; from search.study import check_storage_url; "
            "check_storage_url('postgresql://u@db/studies'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'sqlalchemy')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_default_is_the_experiments_sqlite_file(tmp_path):
    tell_trials(open_storage(None, tmp_path), "exp/unfrozen")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert (tmp_path / "optuna.db").is_file()
    assert_read_back(url, "exp/unfrozen")
    assert storage_label(None, tmp_path) == url
    assert shlex.split(dashboard_command(None, tmp_path)) == ["optuna-dashboard", url]


def test_sqlite_url_is_read_back(tmp_path):
    url = check_storage_url(f"sqlite:///{tmp_path / 'shared.db'}")
    tell_trials(open_storage(url, tmp_path / "exp"), "exp/frozen")
    assert_read_back(url, "exp/frozen")
    assert not (tmp_path / "exp").exists()  # the experiment's own file is not made


def test_journal_is_read_back_by_another_storage(tmp_path):
    path = tmp_path / "studies with space.log"
    url = check_storage_url(f"journal:{path}")
    tell_trials(open_storage(url, tmp_path), "exp/lp_ft")
    other = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    assert_read_back(other, "exp/lp_ft")
    assert storage_label(url, tmp_path) == url
    assert shlex.split(dashboard_command(url, tmp_path)) == [
        "optuna-dashboard", "--storage-class", "JournalFileStorage", str(path)]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_storage_pickles_and_reconnects(tmp_path, kind):
    url = None if kind == "sqlite" else f"journal:{tmp_path / 'studies.log'}"
    storage = open_storage(url, tmp_path)
    tell_trials(storage, "exp/scratch")
    assert_read_back(pickle.loads(pickle.dumps(storage)), "exp/scratch")


def test_a_sqlite_study_writes_ahead_and_its_checkpoint_leaves_a_whole_db_file(tmp_path):
    """WAL with synchronous=NORMAL: a commit needs no fsync (Optuna commits ~25 times a trial),
    also in Ray's unpickled copy; after `checkpoint` the .db file alone holds every trial."""
    storage = open_storage(None, tmp_path)
    tell_trials(storage, "exp/scratch")
    with sqlite3.connect(tmp_path / "optuna.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pickle.loads(pickle.dumps(storage)).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    checkpoint(storage)
    assert (tmp_path / "optuna.db-wal").stat().st_size == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(tmp_path / "optuna.db", copy / "optuna.db")  # the file alone, as uploaded
    assert_read_back(f"sqlite:///{copy / 'optuna.db'}", "exp/scratch")
    checkpoint(None)  # no study (--config, PBT), and a journal file: nothing to do
    checkpoint(open_storage(f"journal:{tmp_path / 'studies.log'}", tmp_path))


def test_password_is_masked(tmp_path):
    url = "postgresql+psycopg2://ada:s3cr%40t@db.example:5432/studies"  # as open_storage sees
    masked = "postgresql+psycopg2://ada:***@db.example:5432/studies"
    assert storage_label(url, tmp_path) == masked
    assert shlex.split(dashboard_command(url, tmp_path)) == ["optuna-dashboard", masked]
    assert storage_label("mysql+pymysql://ada:p@ss@db/s", tmp_path) == "mysql+pymysql://ada:***@db/s"
    assert storage_label("postgresql+psycopg2://db/s?user=ada&password=pw&x=1", tmp_path) == \
        "postgresql+psycopg2://db/s?user=ada&password=***&x=1"
    assert storage_label("postgresql+psycopg2://ada@db:5432/s", tmp_path) == \
        "postgresql+psycopg2://ada@db:5432/s"
    with pytest.raises(UsageError) as raised:
        check_storage_url("postgres://ada:s3cret@db/studies")
    assert "s3cret" not in str(raised.value) and "ada:***@db" in str(raised.value)


@needs_psycopg2
def test_unreachable_postgres_fails_fast_with_one_line(tmp_path):
    url = f"postgresql://ada:s3cret@127.0.0.1:{free_port()}/studies"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StorageError) as raised:
        open_storage(url, tmp_path)
    assert time.monotonic() - start < 15
    message = str(raised.value)
    assert message.startswith(
        "cannot open the Optuna storage postgresql+psycopg2://ada:***@127.0.0.1:")
    assert "Connection refused" in message and "start the database server" in message
    assert "s3cret" not in message and "\n" not in message


@needs_psycopg2
def test_silent_postgres_times_out_instead_of_hanging(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://ada@127.0.0.1:{silent.getsockname()[1]}/studies"
        start = time.monotonic()
        with pytest.raises(StorageError, match="timeout expired; start the database server"):
            open_storage(url, tmp_path, timeout_s=2)
        assert time.monotonic() - start < 15


def test_journal_in_an_unwritable_place_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="check that the file's directory exists"):
        open_storage(f"journal:{tmp_path / 'missing' / 'studies.log'}", tmp_path)


def test_study_shared_through_a_real_postgres(postgres_url, tmp_path):
    url = check_storage_url(postgres_url)  # the psycopg2 driver spelled out: SQLAlchemy 2.1
    assert url == postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    storage = open_storage(url, tmp_path)
    tell_trials(storage, "exp/partial")
    assert_read_back(url, "exp/partial")  # another driver, from the URL alone
    assert_read_back(pickle.loads(pickle.dumps(storage)), "exp/partial")
    assert storage_label(url, tmp_path) == url
    assert shlex.split(dashboard_command(url, tmp_path)) == ["optuna-dashboard", url]
    assert not (tmp_path / "optuna.db").exists()
