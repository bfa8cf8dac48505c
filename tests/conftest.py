import pytest
import torch

from trainables.data.demo import load_demo


@pytest.fixture(scope="session")
def tiny_demo():
    return load_demo(train_per_class=8, image_size=32)


@pytest.fixture(autouse=True)
def _one_thread_and_a_private_cache(monkeypatch, tmp_path_factory):
    torch.set_num_threads(1)
    # run.py's default cache is per machine (~/.cache); tests and their subprocesses use their own
    monkeypatch.setenv("TRANSFER_SEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
