"""`--storage s3://...`: a real S3 API (moto's server on loopback), reached through pyarrow.

Tune writes trials and checkpoints to the bucket; the driver's files (experiment.json,
trials.json, the study, leaderboard, best configs) and the report go there too, nothing is
written beside the command, and the experiment resumes and reports from the URI alone.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from search.outcomes import prune_checkpoints
from store.uri import checkpoint_dirs, download, exists, join_uri, size, upload
from tests.helpers import free_port, run_search

ROOT = Path(__file__).resolve().parents[1]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """An empty bucket on a moto S3 server of this module's own; yields its URI's options.
    Skips where moto is not installed (it is a dev extra; a GPU machine's image may lack it)."""
    moto_server = Path(sys.executable).parent / "moto_server"
    if not moto_server.is_file():
        pytest.skip("moto_server is not installed: pip install -e '.[dev]' for the S3 tests")
    port = free_port()
    server = subprocess.Popen([str(moto_server), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                fs, _ = pafs.FileSystem.from_uri(f"s3://runs?{options}&allow_bucket_creation=1")
                fs.create_dir("runs")
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start within 30 s"
                time.sleep(0.5)
        yield options
    finally:
        server.kill()
        server.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def s3(options: str, *parts: str) -> str:
    return join_uri(f"s3://runs?{options}", *parts)


def test_join_uri_keeps_the_query_options_at_the_end():
    assert join_uri("s3://b/p?scheme=http", "exp", "report") == "s3://b/p/exp/report?scheme=http"
    assert join_uri("/local/path/", "exp") == "/local/path/exp"


def test_an_experiment_goes_up_and_comes_back_without_its_checkpoints(bucket, tmp_path):
    local = tmp_path / "exp"
    (local / "scratch" / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    (local / "scratch" / "trial_a" / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"w" * 9)
    (local / "scratch" / "trial_a" / "result.json").write_text('{"val_acc": 0.5}\n')
    (local / "best").mkdir()
    (local / "best" / "scratch.yaml").write_text("strategy: scratch\n")
    (local / "experiment.json").write_text("{}")
    uri = s3(bucket, "up-down")

    upload(local, uri, skip=("scratch",))  # the driver's files; Tune writes its own folders
    assert exists(join_uri(uri, "best", "scratch.yaml"))
    assert exists(join_uri(uri, "experiment.json"))
    assert not exists(join_uri(uri, "scratch"))

    upload(local / "scratch", join_uri(uri, "scratch"))  # as Tune would have
    back = tmp_path / "back"
    assert download(uri, back) == 3
    assert (back / "scratch" / "trial_a" / "result.json").read_text() == '{"val_acc": 0.5}\n'
    assert not (back / "scratch" / "trial_a" / "checkpoint_000001").exists()
    assert download(uri, tmp_path / "all", checkpoints=True) == 4
    assert size(uri) == sum(f.stat().st_size for f in local.rglob("*") if f.is_file())


def test_pruning_deletes_checkpoints_on_the_bucket_and_keeps_the_best(bucket, tmp_path):
    local = tmp_path / "exp"
    for trial in ("trial_good", "trial_bad"):
        for epoch in (1, 2):
            folder = local / "scratch" / trial / f"checkpoint_00000{epoch}"
            folder.mkdir(parents=True)
            (folder / "checkpoint.pt").write_bytes(b"w")
    uri = s3(bucket, "prune")
    upload(local, uri)
    trials = pd.DataFrame({"strategy": ["scratch", "scratch"], "errored": [False, False],
                           "val_acc": [0.9, 0.2], "checkpoint": ["checkpoint_000001"] * 2,
                           "trial_dir": [str(local / "scratch" / t)
                                         for t in ("trial_good", "trial_bad")]})

    kept = prune_checkpoints(trials, 1, local, uri)

    assert kept == ["scratch/trial_good/checkpoint_000001"]
    assert [p.rsplit("/", 1)[-1] for p in checkpoint_dirs(uri, "scratch/trial_good")] == \
        ["checkpoint_000001"]
    assert checkpoint_dirs(uri, "scratch/trial_bad") == []


@pytest.mark.slow
def test_a_search_on_s3_writes_everything_there_and_resumes_and_reports_from_it(bucket,
                                                                                 tmp_path):
    storage = s3(bucket, "experiments")
    first = run_search(tmp_path, "--strategy", "scratch", "--samples", "2", "--max-epochs",
                       "2", "--storage", storage, "--name", "on-s3")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    uri = join_uri(storage, "on-s3")
    assert f"experiment: {uri}" in first.stdout

    for name in ("experiment.json", "trials.json", "optuna.db", "leaderboard.csv",
                 "leaderboard.md", "best/scratch.yaml"):
        assert exists(join_uri(uri, name)), name
    copy = tmp_path / "copy"
    download(uri, copy, checkpoints=True)
    trials = sorted((copy / "scratch").glob("trial_*/result.json"))
    assert len(trials) == 2  # Tune's own results, written to the bucket
    assert all(len(list(t.parent.glob("checkpoint_*"))) == 1 for t in trials)  # pruned there
    board = pd.read_csv(copy / "leaderboard.csv")
    assert board.loc[0, "strategy"] == "scratch" and board.loc[0, "trials"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "copy"]  # nothing beside it

    again = run_search(tmp_path, "--strategy", "scratch", "--storage", storage, "--name", "on-s3")
    assert again.returncode == 2 and "already exists" in again.stderr, again.stderr
    resumed = run_search(tmp_path, "--resume", "on-s3", "--storage", storage, "--no-dashboard",
                         tiny=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "scratch: already searched, kept" in resumed.stdout

    report = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), uri],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert exists(join_uri(uri, "report", "report.md"))


def test_storage_that_cannot_be_reached_is_one_clear_error(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():  # without them, AWS's SDK asks EC2 metadata first
        monkeypatch.setenv(key, value)
    closed = free_port()
    started = time.monotonic()
    result = run_search(tmp_path, "--strategy", "scratch", "--storage",
                        f"s3://runs/x?endpoint_override=127.0.0.1:{closed}"
                        "&scheme=http&region=us-east-1", "--name", "nowhere")
    assert result.returncode == 2, result.stderr
    assert "cannot reach it" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "cache" / "staging").exists() or \
        not any((tmp_path / "cache" / "staging").rglob("experiment.json"))


def test_a_report_on_storage_that_cannot_be_reached_is_one_clear_error(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://runs/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
    report = subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), uri],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert report.returncode == 2, report.stderr[-3000:]
    assert "report.py: error:" in report.stderr and "cannot reach it" in report.stderr
    assert "Traceback" not in report.stderr
