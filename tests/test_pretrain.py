"""Pretraining stages: imagenet weights from a local file or the hub, supervised on the demo,
and the record each stage leaves: what it trained on and how well, per epoch, on held-out data."""

import json
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch

from tests.helpers import TINY_MODEL
from trainables.models import build_model
from trainables.pretrain import (
    Stage,
    StageConfig,
    StageError,
    file_state,
    read_stage,
    run_stage,
    train_supervised,
    write_stage,
)


@pytest.fixture(scope="module")
def small_source(tiny_demo):
    """A slice of the demo's source set: 8 training and 3 val images per class, so a stage
    trains in a second."""
    source = tiny_demo.source

    def per_class(split, n):
        idx = np.concatenate([np.flatnonzero(split.labels == c)[:n]
                              for c in range(source.num_classes)])
        return split.take(np.sort(idx))

    return replace(source, train=per_class(source.train, 8), val=per_class(source.val, 3))


def test_weights_file_loads_the_backbone_and_drops_the_classifier(tmp_path):
    source = timm.create_model(TINY_MODEL, num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    state = file_state(TINY_MODEL, str(path))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    model = build_model(TINY_MODEL, 7, state=state)
    assert model.get_classifier().out_features == 7


def test_weights_file_of_another_architecture_names_the_mismatches(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_convnext").state_dict(), path)
    try:
        file_state(TINY_MODEL, str(path))
    except StageError as error:
        message = str(error)
    else:
        raise AssertionError("a mismatching checkpoint must be refused")
    assert "do not match" in message and "missing" in message and "stem" in message


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": object()}, path)
    try:
        file_state(TINY_MODEL, str(path))
    except StageError as error:
        assert "cannot load" in str(error)
    else:
        raise AssertionError("weights_only loading must refuse arbitrary objects")


def test_supervised_stage_learns_the_source_classes(small_source):
    stage = Stage("supervised", TINY_MODEL, small_source.fingerprint,
                  StageConfig(epochs=3, lr=0.05, batch_size=16))
    state, record = run_stage(stage, small_source)
    assert record["stage"] == "supervised" and len(record["losses"]) == 3
    assert record["losses"][-1] < record["losses"][0]
    assert not any(k.startswith("fc.") for k in state)
    build_model(TINY_MODEL, small_source.num_classes, state=state)  # loads strictly


def test_supervised_record_says_what_it_trained_on_and_its_held_out_accuracy(small_source,
                                                                             tmp_path):
    stage = Stage("supervised", TINY_MODEL, small_source.fingerprint,
                  StageConfig(epochs=2, lr=0.05, batch_size=16))
    state, record = run_stage(stage, small_source)
    assert len(record["val_acc"]) == 2
    assert all(isinstance(a, float) and 0 <= a <= 1 for a in record["val_acc"])
    assert (record["epochs"], record["data"]) == (2, "demo-source")
    assert (record["images"], record["val_images"]) == (len(small_source.train),
                                                        len(small_source.val))
    assert "val_l1" not in record
    json.dumps(record)  # the whole record is JSON: nothing for public_record to drop
    write_stage(tmp_path / "entry", state, record)
    assert read_stage(tmp_path / "entry")[1] == json.loads(json.dumps(record))


def test_measuring_the_held_out_set_changes_nothing_the_stage_learns(small_source,
                                                                     monkeypatch):
    """Evaluation runs in eval mode without gradients: no BatchNorm statistic, weight or random
    draw of training may change because val accuracy is measured, so each epoch's training
    loss is the same bit for bit; the stage stops `patience` epochs past its best and says so.
    On the CPU wherever it runs: it compares two trainings bit for bit, which a GPU's
    autotuned, nondeterministic cuDNN kernels do not promise."""
    monkeypatch.setattr("trainables.pretrain.pick_device", lambda: torch.device("cpu"))
    config = StageConfig(epochs=4, lr=0.05, batch_size=16, patience=1)
    plain_losses, losses, accuracies, outcome = [], [], [], {}
    train_supervised(TINY_MODEL, small_source, config, plain_losses)
    train_supervised(TINY_MODEL, small_source, config, losses, accuracies, outcome=outcome)
    assert losses == plain_losses[: len(losses)]
    best = max(range(len(accuracies)), key=lambda i: (accuracies[i], -i)) + 1
    assert outcome["best_epoch"] == best and outcome["epochs_run"] == len(accuracies)
    assert len(accuracies) == min(4, best + 1)
    assert outcome["stopped"] == ("patience" if len(accuracies) < 4 else "epochs")


def test_stage_keys_change_with_their_inputs():
    base = Stage("colorization", "resnet18", "abc", StageConfig())
    assert base.key == Stage("colorization", "resnet18", "abc", StageConfig()).key
    assert base.key != Stage("colorization", "resnet18", "abd", StageConfig()).key
    assert base.key != Stage("colorization", "resnet50", "abc", StageConfig()).key
    assert base.key != Stage("colorization", "resnet18", "abc", StageConfig(epochs=3)).key
