"""Pretraining stages: imagenet weights from a local file or the hub, supervised on the demo."""

import timm
import torch

from tests.helpers import TINY_MODEL
from trainables.models import build_model
from trainables.pretrain import (
    Stage,
    StageConfig,
    StageError,
    file_state,
    run_stage,
)


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


def test_supervised_stage_learns_the_source_classes(tiny_demo):
    stage = Stage("supervised", TINY_MODEL, tiny_demo.source.fingerprint,
                  StageConfig(epochs=3, lr=0.05, batch_size=16))
    state, record = run_stage(stage, tiny_demo)
    assert record["stage"] == "supervised" and len(record["losses"]) == 3
    assert record["losses"][-1] < record["losses"][0]
    assert not any(k.startswith("fc.") for k in state)
    build_model(TINY_MODEL, tiny_demo.num_classes, state=state)  # loads strictly


def test_stage_keys_change_with_their_inputs():
    base = Stage("colorization", "resnet18", "abc", StageConfig())
    assert base.key == Stage("colorization", "resnet18", "abc", StageConfig()).key
    assert base.key != Stage("colorization", "resnet18", "abd", StageConfig()).key
    assert base.key != Stage("colorization", "resnet50", "abc", StageConfig()).key
    assert base.key != Stage("colorization", "resnet18", "abc", StageConfig(epochs=3)).key
