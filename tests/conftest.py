import gc
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data.demo import load_demo

# a shared experiment (run_once) is made by the first worker that asks, while any other that
# asks waits for it: its readers run on one worker (pytest -n's --dist loadgroup), and the others
# go on with other tests. So do the users of test_serve.py's service, a module fixture that
# would otherwise start Ray Serve once on each worker that runs one of them
SHARED_FIXTURE_GROUPS = {"all_strategies_search": "all_strategies",
                         "handback_search": "handback",
                         "backbones_search": "backbones",
                         "service": "serve"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The users of a shared experiment or service in its xdist group. Tests marked `gpu` check
    what only a CUDA GPU can show; elsewhere they skip."""
    for item in items:
        for fixture, group in SHARED_FIXTURE_GROUPS.items():
            if fixture in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(group))
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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_demo) -> Path:
    """test_resnet trained a few steps, so its probabilities are far from uniform and a wrong
    normalisation or softmax shows, then saved as evaluate.py keeps a winner."""
    from trainables.config import TrialConfig
    from trainables.export import save_model
    from trainables.models import build_model, normalizer

    torch.manual_seed(0)
    model = build_model("test_resnet", tiny_demo.num_classes)
    norm = normalizer(model)
    images = torch.from_numpy(np.asarray(tiny_demo.train.images))
    labels = torch.from_numpy(np.asarray(tiny_demo.train.labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(15):  # BatchNorm's running statistics move too, as in training
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(norm(images)), labels).backward()
        optimizer.step()
    hp = TrialConfig(lr=0.01, batch_size=8, augment="none", weight_decay=0.0)
    return save_model(tmp_path_factory.mktemp("kept") / "unfrozen", model.eval(),
                      backbone="test_resnet", hp=hp, classes=tiny_demo.classes,
                      image_size=32, extra={"strategy": "unfrozen", "test_acc": 0.625})


@pytest.fixture(scope="session")
def image_files(tiny_demo, tmp_path_factory) -> list[Path]:
    """Test images saved larger and not square, so decoding resizes and crops them."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, array in enumerate(np.asarray(tiny_demo.test.images)[:6]):
        image = Image.fromarray(array.transpose(1, 2, 0)).resize((56 + 8 * i, 48))
        paths.append(folder / f"image{i}.png")
        image.save(paths[-1])
    return paths


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


# in-process Ray for the tests that drive a Tuner or tasks themselves: two CPUs, and one fake
# GPU so that GPU shares are placed and held on a machine without one
RAY_LOCAL = {"num_cpus": 2, "num_gpus": 1, "include_dashboard": False, "logging_level": "ERROR"}


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """In-process Ray (RAY_LOCAL), started once per test process and kept for the next test
    that asks. A test that runs search.run.main in-process stops it first: main starts and
    stops its own, and the next test that asks starts this one again."""
    import ray

    if not ray.is_initialized():
        ray.init(**RAY_LOCAL)
    return ray


@pytest.fixture
def no_ray():
    """No in-process Ray, for a test of what happens before ray.init: stops ray_local's, which
    the next test that asks for it starts again."""
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def all_strategies_search(tmp_path_factory):
    """One tiny real search of every registered strategy, 2 trials each, ending with the final
    evaluation over 2 seeds: (experiment dir, the run's stdout). Shared by the slow tests that
    read a whole experiment, so the suite pays for it once, whichever worker asks first."""
    from tests.helpers import shared_search

    return shared_search(tmp_path_factory, "all_strategies", "all", "--max-epochs", "2",
                         "--strategy", "all", "--samples", "2", "--final-eval", "2",
                         timeout=1200)


@pytest.fixture(scope="session")
def backbones_search(tmp_path_factory):
    """One tiny real search of frozen over two backbones: 5 trials of TPE, one at a time, its
    preset first (tests/test_backbones.py, and TPE's start-up in tests/test_search_flow.py):
    (experiment dir, the run's stdout)."""
    from tests.helpers import BACKBONES, shared_search

    return shared_search(tmp_path_factory, "backbones", "bb", "--strategy", "frozen",
                         "--backbone", ",".join(BACKBONES), "--samples", "5", "--max-epochs",
                         "2")


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB tmpfs, unmounted afterwards; skips where mounting is not permitted (not root,
    or a container without CAP_SYS_ADMIN)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a tmpfs to fill: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        gc.collect()  # a failed torch.save's writer keeps its (unlinked) file open until then
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
