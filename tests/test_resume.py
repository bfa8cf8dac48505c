"""A trial that fails resumes from its last checkpoint instead of starting over."""

import json

import pytest
import ray
from ray import tune

from tests.flaky import crash_once_after_first_report
from tests.helpers import TINY_MODEL
from trainables.config import RunSettings
from trainables.data.demo import load_demo

pytestmark = pytest.mark.slow


def test_failed_trial_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv("FLAKY_MARKER", str(marker))
    settings = RunSettings(strategy="unfrozen", backbone=TINY_MODEL, max_epochs=3, seed=0)
    config = {"lr": 0.05, "batch_size": 16, "augment": "flip", "weight_decay": 1e-4,
              "lr_mult": 0.5}
    ray.init(num_cpus=1, include_dashboard=False,
             runtime_env={"env_vars": {"FLAKY_MARKER": str(marker)}})
    try:
        tuner = tune.Tuner(
            tune.with_parameters(crash_once_after_first_report, settings=settings,
                                 data=load_demo(4).for_search(), weights=None),
            param_space=config,
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="resume",
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
        result = tuner.fit()[0]
    finally:
        ray.shutdown()
    assert marker.read_text() == "1"
    assert result.error is None
    rows = [json.loads(line) for line in (tmp_path / "resume").glob("*/result.json")
            .__next__().read_text().splitlines()]
    # epoch 1 is reported once, before the crash; the restarted trial goes on at epoch 2
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["training_iteration"] for r in rows] == [1, 2, 3]
