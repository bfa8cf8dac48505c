import pytest
import torch

from trainables.data.demo import load_demo


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` check what only a CUDA GPU can show; elsewhere they skip."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker gpu): run them where one is, "
                            "e.g. with `python bench/gpu.py --check`")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_demo():
    return load_demo(train_per_class=8, image_size=32)


@pytest.fixture(autouse=True)
def _one_thread_and_a_private_cache(monkeypatch, tmp_path_factory):
    torch.set_num_threads(1)
    # run.py's default cache is per machine (~/.cache); tests and their subprocesses use their own
    monkeypatch.setenv("TRANSFER_SEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """URL of a database on a PostgreSQL server started (and stopped) on loopback for the
    module; skips, saying how to install one, only where the server binaries are missing."""
    from tests.postgres import PostgresMissing, start_postgres

    try:
        url, stop = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    yield url
    stop()


@pytest.fixture(scope="session")
def all_strategies_search(tmp_path_factory):
    """One tiny real search of every registered strategy, 2 trials each, ending with the final
    evaluation over 2 seeds: (experiment dir, the run's stdout). Shared by the slow tests that
    read a whole experiment, so the suite pays for it once."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import TINY_MODEL

    root = tmp_path_factory.mktemp("all_strategies")
    run = Path(__file__).resolve().parents[1] / "search" / "run.py"
    result = subprocess.run(
        [sys.executable, str(run), "--data", "demo:8", "--backbone", TINY_MODEL,
         "--max-epochs", "2", "--pretrain-epochs", "1", "--cpus-per-trial", "1",
         "--strategy", "all", "--samples", "2", "--final-eval", "2",
         "--storage", str(root / "experiments"), "--name", "all",
         "--cache-dir", str(root / "cache")],
        cwd=root, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "experiments" / "all", result.stdout
