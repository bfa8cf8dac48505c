"""The device a trial trains on, its precision, and its share of a GPU's memory.

One place owns these rules, for the trials, the pretraining stages, the frozen-backbone features
and the final evaluation alike: CUDA when the process has a GPU (Ray gives a task or trial with
`num_gpus=0` none), bf16 autocast there (fp16 with loss scaling where bf16 is missing), fp32 on
CPUs, channels-last inputs, and a fractional trial held to its fraction of the GPU's memory.
"""

from __future__ import annotations

import contextlib
import gc
import os

import torch

# cuDNN's autotuner: on (1, the default), it times every algorithm of each convolution at each
# new input shape and keeps the fastest; off (0), cuDNN's heuristics choose at once. Set it
# around `bench/gpu.py --only-search` to compare the two on a search (not yet measured).
CUDNN_AUTOTUNE_ENV = "TRANSFER_SEARCH_CUDNN_AUTOTUNE"


def pick_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # a trial's shapes are fixed (one batch size, one image size), so the autotuner picks each
    # convolution's fastest algorithm once, in the first steps, and keeps it
    torch.backends.cudnn.benchmark = os.environ.get(CUDNN_AUTOTUNE_ENV, "1") != "0"
    return torch.device("cuda")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that have it (Ampere on), fp16 on older ones; none on
    CPUs, where bf16 is slower than fp32 without AMX."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) \
        else torch.float16


def precision(device: torch.device) -> str:
    """The device and the dtype its forward passes compute in, e.g. "cuda-bfloat16" or
    "cpu-float32": what a cached model output depends on besides the model and its input."""
    dtype = amp_dtype(device) or torch.float32
    return f"{device.type}-{str(dtype).removeprefix('torch.')}"


def task_precision(gpus_per_trial: float) -> str:
    """The precision a task with `gpus_per_trial` of a GPU computes in, as this process sees
    it: the CPU's without a GPU; with one, the GPU's where this process has a GPU too (one
    machine: the same kind), else just "cuda"."""
    if gpus_per_trial <= 0:
        return precision(torch.device("cpu"))
    return precision(torch.device("cuda")) if torch.cuda.is_available() else "cuda"


def autocast(device: torch.device):
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16, whose small gradients underflow to zero; bf16 has fp32's range
    and needs none (a disabled scaler passes the loss and the step straight through)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    # NHWC is the fast layout for convolutions with cuDNN and oneDNN; features stay 2-D.
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def gpu_share(gpus_per_trial: float) -> float:
    """The fraction of its GPU a trial may use: its `--gpus-per-trial` when a fraction (Ray
    packs 1/k-GPU trials k to a GPU), else the whole GPU."""
    return gpus_per_trial if 0 < gpus_per_trial < 1 else 1.0


def hold_to_share(device: torch.device, gpus_per_trial: float) -> None:
    """Hold this process's CUDA allocations to its share of the GPU, so a trial that outgrows
    its share runs out of memory itself, instead of taking its neighbours' memory and making
    them fail. torch's caching allocator raises OutOfMemoryError at the limit, which the trial
    reports as out of memory at its batch size (trainables.failures.memory_guard)."""
    if device.type == "cuda":  # torch wants the device's index: None is the current one
        torch.cuda.set_per_process_memory_fraction(float(gpu_share(gpus_per_trial)),
                                                   device.index)


def release_gpu_memory() -> None:
    """Give the CUDA memory the caching allocator holds, but no tensor uses, back to the GPU:
    when a reused actor's trial ends, so the next trial of that actor, or a neighbour on the
    same GPU, can have it. Without CUDA initialised in this process, there is none."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # tensors held only by reference cycles (a traceback's frames)
        torch.cuda.empty_cache()
