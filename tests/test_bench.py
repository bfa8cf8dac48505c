"""The benchmark scripts still run (tiny sizes): a broken benchmark measures nothing."""

import torch

from bench.data_pipeline import generate_folder, time_epochs, time_preparation
from bench.frozen_fast_path import epoch_seconds
from tests.conftest import TINY_MODEL
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.strategies import get_strategy


def test_data_pipeline_pieces(tmp_path):
    assert generate_folder(tmp_path / "images", per_class=3, size=16) == 30
    first, cached = time_preparation(tmp_path / "images", tmp_path / "cache")
    assert first > 0 and cached > 0
    images = torch.randint(0, 255, (32, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 10, (32,))
    epochs = time_epochs(images, labels, TINY_MODEL, batch_size=16, repeats=1)
    assert set(epochs) == {False, True} and all(v["bare"] > 0 for v in epochs.values())


def test_frozen_fast_path_epoch(tiny_demo):
    model = build_model(TINY_MODEL, 10)
    plan = get_strategy("frozen").setup(model, TrialConfig(lr=0.1, batch_size=16,
                                                          augment="none", weight_decay=0.0))
    feats = torch.randn(len(tiny_demo.train), model.get_classifier().in_features)
    labels = torch.from_numpy(tiny_demo.train.labels)
    assert epoch_seconds(model.get_classifier(), plan, model, feats, labels,
                         torch.nn.Identity(), 16) > 0
