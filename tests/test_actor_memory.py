"""The actor-memory benchmark on a tiny search, and the trial-end release of freed memory."""

import ctypes
import ctypes.util
import sys

import psutil
import pytest

from bench import actor_memory
from tests.helpers import TINY_MODEL
from trainables.memory import release_memory

BLOCK, BLOCKS = 64 * 1024, 2000  # 128 MB in blocks under glibc's mmap threshold: on the heap


@pytest.mark.slow  # runs a 4-trial search through search/run.py
def test_actor_memory_table():
    m = actor_memory.measure(trials=4, max_epochs=1, data="demo:4", backbone=TINY_MODEL)
    assert m["trials"] == 4 and m["seconds"] > 0
    assert 1 <= len(m["actors"]) <= 4
    assert sum(len(a["end"]) for a in m["actors"]) == 4, "every trial is matched to its actor"
    for actor in m["actors"]:
        pairs = zip(actor["peak"], actor["end"], strict=True)
        assert all(peak >= end > 50e6 for peak, end in pairs)

    rows = actor_memory.table(m)
    assert rows[0][0] == f"search: 4 trials x 1 epochs, demo:4, {TINY_MODEL}"
    assert len(rows) == 1 + 5 * len(m["actors"])
    for i, actor in enumerate(m["actors"], 1):
        n, early = len(actor["end"]), min(3, len(actor["end"]))
        block = rows[1 + 5 * (i - 1): 1 + 5 * i]
        assert [r[0] for r in block] == [
            f"actor {i} (pid {actor['pid']}): trials run",
            f"actor {i}: RSS at the end of trial {early}",
            f"actor {i}: RSS at the end of trial {n} (its last)",
            f"actor {i}: RSS peak in trial {early}", f"actor {i}: RSS peak in trial {n} (its last)"]
        assert block[0][1] == str(n)
        assert block[2][2].endswith(f"x trial {early}") and block[4][2].endswith(f"x trial {early}")
    text = actor_memory.format_table(rows)
    assert text.splitlines()[0].split() == ["measure", "value", "ratio"]
    assert len(text.splitlines()) == len(rows) + 1


def test_table_on_given_numbers():
    m = {"trials": 5, "max_epochs": 2, "data": "demo", "backbone": "resnet18", "seconds": 61.2,
         "actors": [{"pid": 7, "end": [1e9, 1.1e9, 1.2e9, 1.5e9], "peak": [1e9] * 4},
                    {"pid": 8, "end": [2e9], "peak": [2.5e9]}]}
    rows = actor_memory.table(m)
    assert rows[0] == ("search: 5 trials x 2 epochs, demo, resnet18", "61 s", "")
    assert rows[1:6] == [
        ("actor 1 (pid 7): trials run", "4", ""),
        ("actor 1: RSS at the end of trial 3", "1200 MB", ""),
        ("actor 1: RSS at the end of trial 4 (its last)", "1500 MB", "1.25x trial 3"),
        ("actor 1: RSS peak in trial 3", "1000 MB", ""),
        ("actor 1: RSS peak in trial 4 (its last)", "1000 MB", "1.00x trial 3")]
    assert rows[7] == ("actor 2: RSS at the end of trial 1", "2000 MB", "")


def test_per_actor_matches_samples_to_trial_ends():
    samples = {7: [(10.0, 100), (10.5, 300), (11.5, 200), (12.5, 400), (13.0, 250)]}
    ends = [{"trial": "a", "pid": 7, "end": 10.0, "epochs": 1},
            {"trial": "b", "pid": 7, "end": 12.0, "epochs": 1},
            {"trial": "c", "pid": 9, "end": 12.0, "epochs": 1}]  # not a sampled process
    assert actor_memory.per_actor(ends, samples) == [
        {"pid": 7, "end": [300, 250], "peak": [300, 400]}]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_returns_freed_heap_pages():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    process = psutil.Process()
    blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    for block in blocks[:-1]:  # the last one pins the heap's top: free pages stay inside it
        libc.free(block)
    before = process.memory_info().rss
    assert release_memory() is True
    after = process.memory_info().rss
    libc.free(blocks[-1])
    assert before - after > BLOCK * BLOCKS / 2, f"RSS {before / 1e6:.0f} -> {after / 1e6:.0f} MB"
    assert release_memory() in (True, False)  # nothing left to release is not an error
