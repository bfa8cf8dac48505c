"""Device rules a GPU shows and a CPU hides, pinned by their mechanism on a CPU: the final
evaluation never moves its model while using it, every split on the device stays within the
trial's budget, a fractional trial is held to its share of GPU memory and a reused actor gives
its CUDA cache back, and the frozen-backbone features are cached per device and precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL
from trainables import device as device_rules
from trainables.config import RunSettings, TrialConfig
from trainables.placement import HostSplit

HP = TrialConfig(lr=0.05, batch_size=24, augment="flip", weight_decay=1e-4)


def test_the_final_evaluation_predicts_with_its_model_where_it_trained(monkeypatch, tiny_demo):
    """It once kept the state with `model.cpu().state_dict()`, which moves the model to the
    CPU in place, then predicted val with it on CUDA inputs: every GPU crashed there, and a CPU
    cannot tell, since .cpu() changes nothing on it. No module may move after training, and
    the kept state is a copy."""
    from search import evaluate

    trained, moves = {}, []
    real_fit, real_apply = evaluate.fit, nn.Module._apply

    def fit(*args, **kwargs):
        trained["model"] = real_fit(*args, **kwargs)
        return trained["model"]

    def apply(self, fn, *args, **kwargs):
        if any(self is m for m in trained.get("model", nn.Identity()).modules()):
            moves.append(type(self).__name__)
        return real_apply(self, fn, *args, **kwargs)

    monkeypatch.setattr(evaluate, "fit", fit)
    monkeypatch.setattr(nn.Module, "_apply", apply)
    out = evaluate.train_and_test(RunSettings("scratch", TINY_MODEL, 1, 0), HP, tiny_demo,
                                  tiny_demo.test, None, epochs=1, train_on="train",
                                  keep_model=True)
    assert moves == [], f"moved after training: {moves[:3]} ..."
    model_state = trained["model"].state_dict()
    assert out["state"].keys() == model_state.keys()
    for name, tensor in out["state"].items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, model_state[name].cpu())
        assert tensor.data_ptr() != model_state[name].data_ptr(), f"{name} is not a copy"
    assert 0 <= out["val_acc"] <= 1 and out["probs"].shape == (len(tiny_demo.test), 10)


@pytest.mark.parametrize("module, call", [
    ("trainables.pretrain", "train_supervised"),
    ("trainables.colorization", "train_colorization"),
])
def test_pretraining_stages_keep_their_splits_within_the_budget(monkeypatch, tiny_demo, module,
                                                                call):
    """A stage with a budget of 0 bytes (a GPU share too small for its data) streams every
    split from host memory, as trials do, instead of moving it whole to the device."""
    import importlib

    from trainables import placement
    from trainables.pretrain import StageConfig

    stage = importlib.import_module(module)
    placed = []
    real = placement.place_inputs

    def place_inputs(arrays, device, budget):
        out, resident = real(arrays, device, budget)
        placed.append((budget, resident, [type(x).__name__ for x in out if x is not None]))
        return out, resident

    monkeypatch.setattr(stage, "place_inputs", place_inputs)
    monkeypatch.setattr(stage, "resident_budget", lambda device, gpus: 0.0)
    config = StageConfig(epochs=1, batch_size=32)
    if call == "train_supervised":
        stage.train_supervised(TINY_MODEL, tiny_demo, config, gpus_per_trial=0.25)
    else:
        stage.train_colorization(TINY_MODEL, tiny_demo.train.images, config,
                                 val_images=tiny_demo.val.images, val_log=[],
                                 gpus_per_trial=0.25)
    assert placed and all(budget == 0 and not resident and set(kinds) == {"HostSplit"}
                          for budget, resident, kinds in placed), placed


def test_prediction_streams_a_split_a_batch_at_a_time(monkeypatch, tiny_demo):
    from trainables import loop
    from trainables.models import build_model, normalizer

    fetched = []
    real_fetch = loop.fetch

    def fetch(source, index, device):
        fetched.append((isinstance(source, HostSplit), len(real_fetch(source, index, device))))
        return real_fetch(source, index, device)

    monkeypatch.setattr(loop, "fetch", fetch)
    model = build_model(TINY_MODEL, 10)
    cpu = torch.device("cpu")
    probs, _ = loop.predict(model, tiny_demo.val.images, normalize=normalizer(model),
                            device=cpu, batch_size=100)
    assert fetched == [(True, 100), (True, 100), (True, 50)]
    assert probs.shape == (250, 10)


def test_a_fractional_trial_is_held_to_its_share_of_gpu_memory(monkeypatch, tiny_demo):
    held = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: held.append(fraction))
    cuda = torch.device("cuda")
    for gpus in (0.25, 0.5, 1.0, 0.0):
        device_rules.hold_to_share(cuda, gpus)
    device_rules.hold_to_share(torch.device("cpu"), 0.25)  # nothing to hold on a CPU
    assert held == [0.25, 0.5, 1.0, 1.0]

    from trainables import trainable

    asked = []
    monkeypatch.setattr(trainable, "hold_to_share", lambda device, gpus: asked.append(gpus))
    trainable.fit(RunSettings("scratch", TINY_MODEL, 1, 0, gpus_per_trial=0.25), HP,
                  tiny_demo.train, tiny_demo.val, None, num_classes=10)
    assert asked == [0.25]


def test_the_cuda_cache_goes_back_only_where_cuda_was_used(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    device_rules.release_gpu_memory()
    assert emptied == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    device_rules.release_gpu_memory()
    assert emptied == [True]


def test_the_precision_names_the_device_and_its_autocast_dtype(monkeypatch):
    assert device_rules.precision(torch.device("cpu")) == "cpu-float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert device_rules.precision(torch.device("cuda")) == "cuda-bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert device_rules.precision(torch.device("cuda")) == "cuda-float16"


def test_features_are_cached_per_device_and_precision(monkeypatch):
    """bf16 features computed on a GPU and fp32 features computed on a CPU differ; a search on
    one must not read the other's from the cache."""
    from trainables.features import features_key

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    keys = {features_key("stage", "data", TINY_MODEL, gpus) for gpus in (0.0, 0.5, 1.0)}
    assert len(keys) == 2  # the CPU's, and one GPU's at either share
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert features_key("stage", "data", TINY_MODEL, 1.0) not in keys  # fp16 on older GPUs


def test_embedding_records_its_precision(tiny_demo):
    from trainables.features import compute_features

    features = compute_features(TINY_MODEL, None, tiny_demo)
    assert features.precision == "cpu-float32"
    assert features.train.shape[0] == len(tiny_demo.train) and features.train.dtype == np.float32
