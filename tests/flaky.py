"""A trainable that dies once after its first checkpoint, to test resuming (importable by Ray)."""

import os
from pathlib import Path

from ray import tune

import trainables.trainable as trainable


def crash_once_after_first_report(config, **kwargs):
    marker = Path(os.environ["FLAKY_MARKER"])
    real_report = tune.report

    def report(metrics, checkpoint=None):
        real_report(metrics, checkpoint=checkpoint)
        if not marker.exists():
            marker.write_text(str(metrics["epoch"]))
            raise RuntimeError("simulated node failure")

    trainable.tune.report = report  # the trainable calls tune.report through its module
    try:
        trainable.train_transfer(config, **kwargs)
    finally:
        trainable.tune.report = real_report
