"""Where a trial's images live: resident on the device, or streamed from host memory.

A prepared split is uint8 (N, 3, S, S). On a GPU it stays resident when the trial's splits fit
in RESIDENT_FRACTION of the trial's share of that GPU's memory, so each batch is an index
slice with no copy. A larger split stays in host memory (the object store's copy, no second
one) and each batch is gathered into pinned memory and copied asynchronously. Either way the
batch reaches the device as uint8, and augmentation and normalisation run there. On a CPU the
host is the device: everything is resident.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables.data.dataset import Split
from trainables.device import gpu_share
from trainables.models import normalizer

# The data may take a quarter of the trial's GPU memory; the rest is the model's: weights,
# optimizer state, and the activations of a batch, which dominate at large batch sizes.
RESIDENT_FRACTION = 0.25


@dataclass(frozen=True)
class HostSplit:
    """A split left in host memory; `fetch` streams its batches to the device."""

    tensor: torch.Tensor

    def __len__(self) -> int:
        return len(self.tensor)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape


Images = torch.Tensor | HostSplit


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Wrap an array (read-only when it comes from Ray's object store) without copying on CPU."""
    return host_tensor(array).to(device, non_blocking=True)


def host_tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-writable arrays: we never write
        return torch.from_numpy(array)


def fetch(source: Images, index: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
    """One batch of `source` on the device.

    A resident split is sliced where it is. A streamed one is gathered on the host into a
    pinned buffer, whose copy to the GPU runs asynchronously while earlier batches compute;
    torch's caching host allocator does not reuse that buffer until its copy has finished.
    """
    if not isinstance(source, HostSplit) or device.type != "cuda":  # already where it is used
        return source.tensor[index] if isinstance(source, HostSplit) else source[index]
    if isinstance(index, slice):
        index = torch.arange(*index.indices(len(source)))
    batch = torch.empty((len(index), *source.tensor.shape[1:]), dtype=source.tensor.dtype,
                        pin_memory=device.type == "cuda")
    torch.index_select(source.tensor, 0, index.cpu(), out=batch)
    return batch.to(device, non_blocking=True)


def resident_budget(device: torch.device, gpus_per_trial: float,
                    total_memory: int | None = None) -> float:
    """Bytes of data a trial keeps on its device: unbounded on a CPU; on a GPU, the stated
    fraction of the trial's share (--gpus-per-trial 0.25: a quarter of the GPU)."""
    if device.type != "cuda":
        return float("inf")
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    return RESIDENT_FRACTION * gpu_share(gpus_per_trial) * total_memory


def place_data(model: nn.Module, features: tuple[np.ndarray, np.ndarray] | None, train: Split,
               val: Split | None, device: torch.device, budget: float
               ) -> tuple[nn.Module, nn.Module, tuple, tuple, bool]:
    """(network to train, its input normaliser, (train x, y), (val x, y), resident).

    Labels always go to the device; inputs go there when they fit in `budget` bytes, else
    they stream. A frozen backbone without augmentation sees the same images every epoch, so
    with `features`, the backbone's precomputed (train, val) outputs, its head trains on them
    instead (identical, no backbone).
    """
    if features is not None:
        net, normalize = model.get_classifier(), nn.Identity()
        inputs = list(features)
    else:
        net, normalize = model, normalizer(model).to(device)
        inputs = [train.images, val.images if val is not None else None]
    (train_x, val_x), resident = place_inputs(inputs, device, budget)
    val_y = to_device(val.labels, device) if val is not None else None
    return (net, normalize, (train_x, to_device(train.labels, device)), (val_x, val_y),
            resident)


def place_inputs(arrays: list[np.ndarray | None], device: torch.device, budget: float
                 ) -> tuple[list[Images | None], bool]:
    """The arrays on the device when together they fit in `budget` bytes, else each left in
    host memory to stream from (None stays None); and whether they are resident. Every split
    that trains or is evaluated on the device goes through here: the trials', the pretraining
    stages' and the final evaluation's."""
    resident = sum(x.nbytes for x in arrays if x is not None) <= budget
    placed = [None if x is None else to_device(x, device) if resident
              else HostSplit(host_tensor(x)) for x in arrays]
    return placed, resident
