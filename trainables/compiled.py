"""`--compile`: the trial's network under `torch.compile`, compiled before its first epoch.

torch.compile is lazy: a graph compiles on its first call with a new shape or mode. Left to
the first epoch, that time would count as training time. So every graph a trial will call is
compiled up front, and timed apart: the training step at the batch size and at the smaller
last batch, and the evaluation forward at its batch sizes. A strategy that unfreezes blocks
mid-trial changes which parameters need gradients, and recompiles in that epoch.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from trainables.device import autocast, channels_last
from trainables.loop import batch_starts
from trainables.placement import Images, fetch


def batch_sizes(n: int, batch_size: int, training: bool = True) -> list[int]:
    """The distinct batch sizes of a pass over `n` samples (the last may be smaller);
    training drops a last batch of one (trainables.loop.batch_starts), evaluation keeps it."""
    starts = batch_starts(n, batch_size) if training else range(0, n, batch_size)
    return sorted({min(batch_size, n - begin) for begin in starts})


def compile_net(net: nn.Module, train_x: Images, val_x: Images | None, *, batch_size: int,
                normalize: nn.Module, device: torch.device, eval_batch: int = 512
                ) -> tuple[nn.Module, float]:
    """(the compiled network, seconds spent compiling). `net` keeps its weights, buffers and
    train/eval modes; the random streams the trial draws from are left where they were."""
    compiled = torch.compile(net)
    # a train-mode forward moves BatchNorm's running statistics: put them back afterwards
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    modes = {name: m.training for name, m in net.named_modules()}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for size in batch_sizes(len(train_x), batch_size):
            x = channels_last(normalize(fetch(train_x, slice(0, size), device)))
            with autocast(device):
                out = compiled(x)
            out.float().sum().backward()
        net.zero_grad(set_to_none=True)
        if val_x is not None and len(val_x):
            net.eval()
            with torch.no_grad():
                for size in batch_sizes(len(val_x), eval_batch, training=False):
                    x = channels_last(normalize(fetch(val_x, slice(0, size), device)))
                    with autocast(device):
                        compiled(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    net.load_state_dict(saved)
    for name, module in net.named_modules():
        module.train(modes[name])
    return compiled, seconds
