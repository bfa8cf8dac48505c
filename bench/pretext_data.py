"""Benchmark colorization's pretext data at scale: 50,000 unlabeled JPEGs as --pretext-data,
prepared as --data is (chunked, memory-mapped, decoded once, cached), then streamed through the
colorization stage of a real search.

    python bench/pretext_data.py        # 50,000 JPEGs of 64 px in a temp folder, at 32 px

Makes one flat folder of JPEGs (bench/big_data.py's generated images, without their class
folders: the stage reads no labels). In a fresh process with an empty cache, prepares it as a
search does (`load_pretrain_data`: a flat folder is unlabeled, its last 5% held out, at most
2,000): the time, the RSS it added at its peak against the decoded arrays' size, the cache on
disk, and whether the arrays it hands back are that cache mapped (no copy on the heap). Then
once more from the warm cache. Then a real search (`search/run.py --strategy colorization
--pretext-data DIR`, one 1-epoch trial on the demo) runs the colorization stage as a Ray task
over every image for `--pretrain-epochs` epochs: the stage's own record gives the images it
trained on and measured itself on, its seconds and images per second (its held-out measurement
each epoch included), next to the search's wall time. `--quick` runs 400 images, to check
that the script works.
"""

from __future__ import annotations

import argparse
import mmap
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.big_data import (
    ChildMemory,
    cpu_seconds,
    folder_bytes,
    generate,
    in_fresh_process,
    proc_status,
)
from bench.tables import format_table
from store.layout import read_experiment

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {"count": 50_000, "jpeg_size": 64, "image_size": 32, "backbone": "resnet10t",
            "pretrain_epochs": 1}
QUICK = {**DEFAULTS, "count": 400, "backbone": "test_resnet"}
MB = 1 << 20


def flat_folder(source: Path, target: Path) -> int:
    """Every JPEG of `source`'s class folders, hard-linked into one flat folder."""
    target.mkdir(parents=True)
    count = 0
    for path in sorted(source.glob("c*/*.jpg")):
        os.link(path, target / f"{path.parent.name}_{path.name}")
        count += 1
    return count


def is_mapped(array: np.ndarray) -> bool:
    """Whether `array` is a read-only view of a file mapped into memory."""
    base = array
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base
    return isinstance(base, (np.memmap, mmap.mmap)) and not array.flags.writeable


def prepare_pretext_here(folder: str, cache: str, image_size: int) -> dict:
    """`load_pretrain_data` of a flat folder in this process: seconds, CPU seconds, peak RSS
    added, decoding workers' private memory, the split sizes, and whether both splits are
    read-only views of the cache file mapped into memory."""
    from trainables.data.load import load_pretrain_data

    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on, not the imports'
    before, cpu = proc_status()["VmRSS"], cpu_seconds()
    workers = ChildMemory()
    workers.start()
    start = time.perf_counter()
    data = load_pretrain_data(folder, image_size, cache_dir=Path(cache))
    seconds = time.perf_counter() - start
    workers.done.set()
    workers.join()
    splits = (data.train.images, data.val.images)
    mapped = all(is_mapped(x) for x in splits)
    return {"seconds": seconds, "cpu": cpu_seconds() - cpu,
            "added": max(0, proc_status()["VmHWM"] - before), "workers": workers.peak,
            "train": len(data.train), "held_out": len(data.val), "mapped": mapped,
            "array_bytes": sum(x.nbytes for x in splits)}


def search_with_pretext(tmp: Path, folder: Path, s: dict) -> dict:
    """A colorization search whose stage trains on `folder`: its stage record and wall time."""
    command = [sys.executable, str(ROOT / "search" / "run.py"), "--strategy", "colorization",
               "--data", "demo:8", "--pretext-data", str(folder), "--backbone", s["backbone"],
               "--image-size", str(s["image_size"]), "--pretrain-epochs",
               str(s["pretrain_epochs"]), "--samples", "1", "--max-epochs", "1",
               "--storage", str(tmp / "runs"), "--name", "pretext", "--cache-dir",
               str(tmp / "search-cache"), "--quiet", "--no-dashboard"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    (record,) = [r for r in read_experiment(tmp / "runs" / "pretext")["stages"]
                 if r["stage"] == "colorization"]
    return {"wall": wall, "record": record}


def measure(count: int, jpeg_size: int, image_size: int, backbone: str,
            pretrain_epochs: int) -> dict:
    s = {"backbone": backbone, "image_size": image_size, "pretrain_epochs": pretrain_epochs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made = generate(tmp / "classes", count, jpeg_size)
        folder = tmp / "pretext"
        assert flat_folder(tmp / "classes", folder) == count
        args = f"{str(folder)!r}, {str(tmp / 'cache')!r}, {image_size}"
        cold = in_fresh_process(f"prepare_pretext_here({args})", "bench.pretext_data")
        cache_bytes = folder_bytes(tmp / "cache")
        warm = in_fresh_process(f"prepare_pretext_here({args})", "bench.pretext_data")
        run = search_with_pretext(tmp, folder, s)
        return {**s, "count": count, "jpeg_size": jpeg_size, "made": made,
                "jpeg_bytes": folder_bytes(folder), "cold": cold, "warm": warm,
                "cache_bytes": cache_bytes, "search": run, "cores": os.cpu_count()}


def table(m: dict) -> list[tuple[str, str, str]]:
    """(measure, value, ratio) rows."""
    cold, warm, record = m["cold"], m["warm"], m["search"]["record"]
    n, size = f"{m['count']:,} images", f"{m['image_size']} px"
    epochs = record.get("epochs_run") or record["epochs"]
    trained = epochs * record["images"]
    return [
        (f"unlabeled JPEGs of {m['jpeg_size']} px, one flat folder", f"{m['count']:,}",
         f"{m['jpeg_bytes'] / MB:,.0f} MB, made in {m['made']:.0f} s on {m['cores']} cores"),
        (f"{n} at {size}: preparation, empty cache", f"{cold['seconds']:.1f} s",
         f"per 1k images {cold['seconds'] / m['count'] * 1000:.2f} s; CPU {cold['cpu']:.0f} s"),
        (f"{n} at {size}: peak RSS added, preparing process", f"+{cold['added'] / MB:,.0f} MB",
         f"decoded arrays {cold['array_bytes'] / MB:,.0f} MB; decoding workers "
         f"{cold['workers'] / MB:,.0f} MB private"),
        (f"{n} at {size}: cache on disk", f"{m['cache_bytes'] / MB:,.0f} MB",
         f"{m['cache_bytes'] / cold['array_bytes']:.2f}x the decoded arrays"),
        ("the splits handed to the stage: train / held out", f"{cold['train']:,} / "
         f"{cold['held_out']:,}", "views of the cache file, mapped" if cold["mapped"]
         else "COPIED into the heap"),
        (f"{n} at {size}: preparation, warm cache", f"{warm['seconds']:.2f} s",
         f"{cold['seconds'] / warm['seconds']:.0f}x faster than empty; peak RSS "
         f"+{warm['added'] / MB:,.0f} MB"),
        (f"colorization stage in a search ({m['backbone']}, {epochs} epoch(s) run): images",
         f"{record['images']:,} + {record['val_images']:,}", "trained + measured on each epoch"),
        ("colorization stage: seconds, and images trained per second",
         f"{record['seconds']:.0f} s", f"{trained / record['seconds']:.0f} img/s, held-out "
         f"ab error {min(record['val_l1']):.2f}" if record.get("val_l1") else
         f"{trained / record['seconds']:.0f} img/s"),
        ("the whole search (data, stage, 1 trial of 1 epoch on demo:8)",
         f"{m['search']['wall']:.0f} s", f"the stage {record['seconds'] / m['search']['wall']:.0%}"
         " of it"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULTS["count"],
                        help="unlabeled images (a multiple of 10)")
    parser.add_argument("--jpeg-size", type=int, default=DEFAULTS["jpeg_size"])
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--backbone", default=DEFAULTS["backbone"])
    parser.add_argument("--pretrain-epochs", type=int, default=DEFAULTS["pretrain_epochs"])
    parser.add_argument("--quick", action="store_true", help="400 images, to check the script")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else {"count": args.count, "jpeg_size": args.jpeg_size,
                                  "image_size": args.image_size, "backbone": args.backbone,
                                  "pretrain_epochs": args.pretrain_epochs}
    print(format_table(table(measure(**s))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
