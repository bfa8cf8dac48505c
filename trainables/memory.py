"""Give a reused trial actor's freed memory back to the OS when a trial starts and ends.

With `reuse_actors`, one Ray worker process runs trial after trial. Nothing of a finished trial
stays referenced: after each trial, gc.get_objects() in the actor found no torch tensor and no
nn.Module, and gc.collect() changed its RSS by 0 MB. Yet the actor's RSS climbed trial after
trial (bench/actor_memory.py --trials 30: scratch resnet18, 2 epochs, demo at 32 px, 2 CPUs,
2 actors; peak RSS 1.29 GB in an actor's 1st trial, 1.88 GB in its 3rd, 2.88 GB in its 16th).
The memory is freed but glibc's malloc keeps it in its heaps: malloc_trim(0) at a trial's end
took an actor from 1.14-1.28 GB down to 0.96-1.02 GB each time. (Calling `fit` 10 times in one
plain process did not grow, 1.27 -> 1.27 GB from the 2nd call to the 10th, nor on a new thread
per call as Tune does, 1.47 -> 1.48 GB; what in the actor makes glibc keep the pages, Ray's own
threads and their arenas perhaps, is not pinned down.)

With malloc_trim(0) before and after each trial, the same 30-trial search peaked at 1.23-1.34
GB in every trial of both actors (0.96x and 0.98x of the 3rd trial after 17 and 13 trials).
MALLOC_ARENA_MAX=2 in the workers' environment only slowed the climb (1.24 -> 1.57 GB over 7
trials, against 1.23 -> 2.03 GB without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory() -> bool:
    """Return the free memory of the process's malloc heaps to the OS; call it when a trial ends.

    True when glibc released some; False when there was none to release, or no glibc.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
