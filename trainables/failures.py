"""How a trial fails on its own: a loss that diverged, or memory that ran out.

Neither is worth Tune's retries: a restart from the last checkpoint repeats the same steps at
the same batch size. So the trial reports the failure once (`failure` in its last result, no
checkpoint) and ends; the searcher records it as failed in the study, the leaderboard counts it
as errored, and the search goes on.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator

import torch

DIVERGED = "diverged"
OUT_OF_MEMORY = "out of memory"


class TrialFailure(RuntimeError):
    """A trial that cannot go on; `kind` is DIVERGED or OUT_OF_MEMORY."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_finite(loss: float, epoch: int) -> None:
    """A NaN or infinite epoch loss: the weights are gone, so the trial stops at once."""
    if not math.isfinite(loss):
        raise TrialFailure(DIVERGED, f"diverged: training loss {loss} at epoch {epoch}")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA OOM, Python's MemoryError, or the CPU allocator's refusal (a RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower())


@contextlib.contextmanager
def memory_guard(batch_size: int, device: torch.device) -> Iterator[None]:
    """Turn running out of memory into a TrialFailure that names the batch size, and give the
    memory back, so the actor can take the next trial."""
    try:
        yield
        return
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        message = f"out of memory at batch size {batch_size} on {device.type} ({first_line(error)})"
    # out of the except clause, the error and its traceback (whose frames hold the batch's
    # tensors) are released; collect them before the next trial allocates
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise TrialFailure(OUT_OF_MEMORY, message)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
