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

    def set_fraction(fraction, device=None):  # torch's own checks of its arguments
        assert isinstance(fraction, float) and (device is None or isinstance(device, int))
        held.append(fraction)

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
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


# --- on a GPU: what the CPU tests above pin by their mechanism --------------------------------

def random_split(n: int, size: int):
    from trainables.data.dataset import Split

    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
                 rng.integers(0, 10, n).astype(np.int64), [f"{i}.png" for i in range(n)])


@pytest.mark.gpu
def test_a_trial_that_outgrows_its_share_of_the_gpu_runs_out_of_memory_alone():
    """1/512 of the GPU (280 MB of an H200) holds a ResNet-18 and its data, not a batch of 256
    images at 128 px: the trial ends as out of memory at its batch size, and the memory it
    took goes back."""
    from trainables.trainable import fit

    reports = []
    hp = TrialConfig(lr=0.05, batch_size=256, augment="none", weight_decay=1e-4)
    try:
        fit(RunSettings("scratch", "resnet18", 2, 0, gpus_per_trial=1 / 512), hp,
            random_split(512, 128), random_split(64, 128), None, num_classes=10,
            report=lambda metrics, state: reports.append(metrics))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert [r.get("failure_kind") for r in reports] == ["out of memory"]
    assert reports[0]["failure"].startswith("out of memory at batch size 256 on cuda")


@pytest.mark.gpu
def test_training_and_evaluation_sync_with_the_host_per_epoch_not_per_step():
    """The number of synchronising calls in an epoch does not grow with its steps (10 or 20,
    under the finite-loss check's 50): augmentation, the step, the running totals and the
    evaluation batches all stay on the GPU."""
    import warnings

    from trainables.loop import evaluate, train_epoch
    from trainables.models import build_model, normalizer

    cuda = torch.device("cuda")
    model = build_model("resnet18", 10).to(cuda, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (640, 3, 32, 32), dtype=torch.uint8, device=cuda)
    y = torch.randint(0, 10, (640,), device=cuda)
    normalize = normalizer(model).to(cuda)

    def syncs(n: int) -> int:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train_epoch(model, optimizer, x[:n], y[:n], batch_size=32, policy="randaugment",
                            normalize=normalize, loss_fn=nn.CrossEntropyLoss(), device=cuda,
                            generator=torch.Generator().manual_seed(0))
                evaluate(model, x[:n], y[:n], normalize=normalize, device=cuda, batch_size=32)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(320)  # warm-up: cuDNN's autotuner tries its algorithms once per shape
    assert syncs(320) == syncs(640)


@pytest.mark.gpu
def test_a_finished_trial_gives_the_cuda_cache_back(tiny_demo):
    from trainables.trainable import fit

    model = fit(RunSettings("scratch", "resnet18", 1, 0), HP, tiny_demo.train, tiny_demo.val,
                None, num_classes=10)
    del model
    cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # held, unused
    assert cached > 0
    device_rules.release_gpu_memory()
    # what stays is only what shares a segment with a live tensor (cuBLAS's workspaces)
    assert torch.cuda.memory_reserved() - torch.cuda.memory_allocated() <= cached / 4


@pytest.mark.gpu
def test_a_gpu_computes_and_keys_its_features_in_its_own_precision(tiny_demo):
    """On a GPU the features are computed within a share of its memory, in its own precision,
    under a cache key that is not the CPU's."""
    from trainables.features import compute_features, features_key

    on_gpu = compute_features(TINY_MODEL, None, tiny_demo, gpus_per_trial=0.5)
    torch.cuda.set_per_process_memory_fraction(1.0)
    assert device_rules.precision(torch.device("cuda")) != "cpu-float32"
    assert features_key("s", "d", TINY_MODEL, 0.5) != features_key("s", "d", TINY_MODEL, 0.0)
    assert on_gpu.train.shape[0] == len(tiny_demo.train) and on_gpu.train.dtype == np.float32
