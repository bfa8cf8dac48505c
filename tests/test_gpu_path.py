"""The GPU code paths, run on a CPU: the precision rule and fp16's loss scaling, cuDNN's
autotuner, data resident on the device or streamed from the host, and --compile."""

import time

import pytest
import torch
from torch import nn

from tests.helpers import TINY_MODEL
from trainables import device, loop, placement
from trainables.config import RunSettings, TrialConfig
from trainables.placement import HostSplit, fetch, place_data, resident_budget
from trainables.trainable import fit

HP = TrialConfig(lr=0.05, batch_size=24, augment="flip", weight_decay=1e-4)


def run_fit(data, hp=HP, **settings):
    reports = []
    model = fit(RunSettings("scratch", TINY_MODEL, 2, 0, **settings), hp, data.train, data.val,
                None, num_classes=data.num_classes, report=lambda m, s: reports.append(m))
    return model, reports


def test_a_gpu_turns_on_cudnn_autotuning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert device.pick_device().type == "cuda"
    assert torch.backends.cudnn.benchmark
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device().type == "cpu"


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_bf16_where_the_gpu_has_it_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert device.amp_dtype(torch.device("cuda")) == expected
    assert device.amp_dtype(torch.device("cpu")) is None  # fp32 on CPUs
    assert not device.grad_scaler(torch.device("cpu")).is_enabled()


def test_fp16_steps_are_loss_scaled_and_an_overflowing_step_is_skipped(monkeypatch):
    """The fp16 path, on the CPU's fp16 autocast: a step whose scaled gradients overflow
    leaves the weights as they were and halves the scale; the others train."""
    monkeypatch.setattr(device, "amp_dtype", lambda device: torch.float16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    x, y = torch.randn(32, 3, 12, 12), torch.randint(0, 4, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = device.grad_scaler(torch.device("cpu"))
    assert scaler.is_enabled()
    blow_up = {"on": True}

    def batch_loss(idx):
        with device.autocast(torch.device("cpu")):
            logits = model(x[idx])
        assert logits.dtype == torch.float16
        loss = nn.functional.cross_entropy(logits.float(), y[idx])
        return loss * (1e38 if blow_up["on"] else 1.0), 0

    before = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    loop.run_epoch(optimizer, 16, batch_loss, batch_size=16, device=torch.device("cpu"),
                   generator=torch.Generator().manual_seed(0), scaler=scaler)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == scale / 2
    blow_up["on"] = False
    loop.run_epoch(optimizer, 32, batch_loss, batch_size=16, device=torch.device("cpu"),
                   generator=torch.Generator().manual_seed(0), scaler=scaler)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_data_stays_resident_within_its_share_of_the_gpu():
    gib = 2**30
    assert resident_budget(torch.device("cpu"), 0.0) == float("inf")
    whole = resident_budget(torch.device("cuda"), 1.0, total_memory=80 * gib)
    assert whole == placement.RESIDENT_FRACTION * 80 * gib
    # four packed trials: each keeps data within a quarter of the budget of a whole GPU
    assert resident_budget(torch.device("cuda"), 0.25, total_memory=80 * gib) == whole / 4
    assert resident_budget(torch.device("cuda"), 2.0, total_memory=80 * gib) == whole


def test_a_split_over_budget_streams_and_trains_exactly_as_a_resident_one(monkeypatch,
                                                                          tiny_demo):
    from trainables.models import build_model

    model = build_model(TINY_MODEL, tiny_demo.num_classes, "linear", None)
    cpu = torch.device("cpu")
    *_, (train_x, _), (val_x, _), resident = place_data(model, None, tiny_demo.train,
                                                        tiny_demo.val, cpu, budget=0)
    assert not resident and isinstance(train_x, HostSplit) and isinstance(val_x, HostSplit)
    images = tiny_demo.train.images
    assert torch.equal(fetch(train_x, torch.tensor([5, 0, 3]), cpu),
                       torch.from_numpy(images[[5, 0, 3]]))
    assert torch.equal(fetch(val_x, slice(2, 6), cpu), torch.from_numpy(tiny_demo.val.images[2:6]))

    # the two trainings are compared bit for bit: on the CPU wherever the test runs, since a
    # GPU's autotuned, nondeterministic cuDNN kernels do not promise that
    monkeypatch.setattr("trainables.trainable.pick_device", lambda: cpu)
    resident_model, resident_reports = run_fit(tiny_demo)
    monkeypatch.setattr("trainables.trainable.resident_budget", lambda device, share: 0)
    streamed_model, streamed_reports = run_fit(tiny_demo)
    assert [r["data_resident"] for r in resident_reports + streamed_reports] == [True] * 2 + \
        [False] * 2
    for a, b in zip(resident_reports, streamed_reports, strict=True):
        assert (a["train_loss"], a["val_acc"]) == (b["train_loss"], b["val_acc"])
    for (name, a), b in zip(resident_model.state_dict().items(),
                            streamed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_compile_happens_before_the_first_epoch_and_trains_like_eager(monkeypatch, tiny_demo):
    """Every graph the epochs call is compiled up front: with recompiles made errors after
    that, both epochs run; the weights, BatchNorm statistics and random streams it touched
    are put back, so the compiled trial matches the eager one. On the CPU wherever it runs:
    in fp32 the two match to 1e-4 after two epochs, a bound that bf16's rounding, which
    differs between eager kernels and inductor's fused ones, does not keep."""
    from trainables import compiled as compiled_module

    monkeypatch.setattr("trainables.trainable.pick_device", lambda: torch.device("cpu"))
    # inductor's scalar C++ kernels, not its SIMD ones: the same graphs, compiled up front the
    # same way, but a fifth less CPU on a cold cache (113 s, not 139 s, here), much of
    # it generating the vectorised code, which says nothing of when a graph compiles
    monkeypatch.setattr("torch._inductor.config.cpp.simdlen", 0)
    original = compiled_module.compile_net
    seen = {}

    def compile_then_forbid_recompiles(net, *args, **kwargs):
        state = {k: v.clone() for k, v in net.state_dict().items()}
        rng = torch.get_rng_state()
        result = original(net, *args, **kwargs)
        seen["restored"] = all(torch.equal(state[k], v) for k, v in net.state_dict().items())
        seen["rng"] = torch.equal(rng, torch.get_rng_state())
        torch.compiler.set_stance("fail_on_recompile")
        return result

    monkeypatch.setattr("trainables.trainable.compile_net", compile_then_forbid_recompiles)
    # without augmentation, inductor's kernels reproduce eager's numbers to float rounding;
    # flipped batches already differ in the fourth digit after one epoch on this CPU
    hp = TrialConfig(lr=0.05, batch_size=24, augment="none", weight_decay=1e-4)
    _, eager = run_fit(tiny_demo, hp)
    start = time.perf_counter()
    try:
        _, compiled = run_fit(tiny_demo, hp, compile=True)
    finally:
        torch.compiler.set_stance("default")
    print(f"compile_s {compiled[0]['compile_s']:.1f} s of {time.perf_counter() - start:.1f} s")
    assert seen == {"restored": True, "rng": True}
    assert [r["compile_s"] for r in eager] == [0.0, 0.0]
    assert compiled[0]["compile_s"] == compiled[1]["compile_s"] > 0
    for e, c in zip(eager, compiled, strict=True):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert c["val_loss"] == pytest.approx(e["val_loss"], rel=1e-4)
