"""Helpers shared by test modules; fixtures live in conftest.py."""

import torch
from torch import nn

TINY_MODEL = "test_resnet"  # timm's 370k-parameter ResNet for tests


def changed(before: nn.Module, after: nn.Module) -> dict[str, bool]:
    """For every floating-point tensor of the state dict: did it change?"""
    old = before.state_dict()
    return {k: not torch.equal(old[k], v) for k, v in after.state_dict().items()
            if v.is_floating_point()}
