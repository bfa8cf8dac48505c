"""Helpers shared by test modules; fixtures live in conftest.py."""

import json

import torch
from torch import nn

TINY_MODEL = "test_resnet"  # timm's 370k-parameter ResNet for tests


def changed(before: nn.Module, after: nn.Module) -> dict[str, bool]:
    """For every floating-point tensor of the state dict: did it change?"""
    old = before.state_dict()
    return {k: not torch.equal(old[k], v) for k, v in after.state_dict().items()
            if v.is_floating_point()}


def marked_json(stdout: str, mark: str):
    """The JSON a helper process printed after `mark` on a line of its own. Found by its mark,
    not as the last line: Ray's drivers also print to stdout (worker logs, cluster events such
    as a node that just died), before or after it."""
    lines = [line for line in stdout.splitlines() if line.startswith(mark + " ")]
    assert lines, f"no line starting {mark!r} in:\n{stdout[-2000:]}"
    return json.loads(lines[-1].removeprefix(mark + " "))
