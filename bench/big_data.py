"""Benchmark a big ImageFolder: preparation time against image count, its peak memory, and the
one copy of the images in Ray's object store.

    python bench/big_data.py        # 100,000 JPEGs of 256 px (~0.4 GB) in a temp folder

Makes one folder of 256 px JPEGs (10 classes; a smooth gradient per class with one shape per
image, deterministic, cheap to make and small on disk) and hard-links its first images into a
smaller folder per count. Each count is prepared at each --image-size by a fresh process with an
empty cache (`load_dataset`: class folders, split 70/15/15), --repeats times; shown are the
fastest wall and CPU time (CPU time, the decoding workers' included, is what other work on a
shared machine disturbs least), how far the process's RSS rose above what it held before (its
peak, reset through /proc/self/clear_refs after the imports), the most private memory of its
decoding workers together (sampled; their RSS would count the pages they share with it), and
the cache it wrote. The largest is prepared once more from its warm cache. Then a fresh driver
loads the largest, puts it in Ray's object store as a search does (`ray.put(data.for_search())`)
and runs two trials whose data comes through the harness's own `search.tuning.make_trainable`
(`tune.with_parameters`): the object store's bytes against the arrays', and the memory the
driver and each trial add. `--quick` runs tiny counts: a check that the script works.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.tables import format_table

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10
COUNTS = (12_500, 25_000, 50_000, 100_000)
QUICK = {"counts": (200, 400), "image_sizes": (32,), "jpeg_size": 64, "repeats": 1}
MB = 1 << 20


# --- the images ---------------------------------------------------------------------------

def _backgrounds(size: int) -> list:
    """One smooth RGB gradient per class: smooth, so each JPEG stays a few kB."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    backgrounds = []
    for c in range(CLASSES):
        red = x * (c % 3) / 2 + y * (1 - (c % 3) / 2)
        channels = [red, (1 - x) * c / (CLASSES - 1), x * y]
        backgrounds.append(Image.fromarray((np.stack(channels, -1) * 255).astype(np.uint8)))
    return backgrounds


def _draw(job: tuple[Path, int, range]) -> int:
    """Image i of each class for i in `indices`, an ellipse or a box seeded by (class, i)."""
    from PIL import ImageDraw

    root, size, indices = job
    backgrounds, written = _backgrounds(size), 0
    for c, background in enumerate(backgrounds):
        for i in indices:
            rng = np.random.default_rng((c, i))
            image = background.copy()
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
            shape = ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle
            shape((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            image.save(root / f"c{c}" / f"{i:06d}.jpg", quality=85)
            written += 1
    return written


def generate(root: Path, count: int, size: int) -> float:
    """`count` JPEGs, count // 10 per class, on every core; returns the seconds it took."""
    start = time.perf_counter()
    per_class = count // CLASSES
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True)
    step = max(1, min(500, per_class // 8))
    jobs = [(root, size, range(i, min(i + step, per_class))) for i in range(0, per_class, step)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        written = sum(pool.imap_unordered(_draw, jobs))
    assert written == per_class * CLASSES
    return time.perf_counter() - start


def link_subset(source: Path, target: Path, count: int) -> None:
    """A folder of the first count // 10 images of each class of `source`, hard-linked."""
    for c in range(CLASSES):
        (target / f"c{c}").mkdir(parents=True)
        for i in range(count // CLASSES):
            os.link(source / f"c{c}" / f"{i:06d}.jpg", target / f"c{c}" / f"{i:06d}.jpg")


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --- measured in a fresh process ------------------------------------------------------------

def proc_status(pid: str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile and RssShmem of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def private_bytes(pid: int) -> int:
    """A process's own memory (USS): its private pages, not those it shares with its parent."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # it has just ended
        return 0
    return sum(int(line.split()[1]) * 1024 for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:")))


class ChildMemory(threading.Thread):
    """The highest sum of this process's children's private memory, sampled every 20 ms: a
    forked decoding worker's RSS would count the pages it shares with this process."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            pids = {int(pid) for task in Path("/proc/self/task").iterdir()
                    for pid in (task / "children").read_text().split()}
            self.peak = max(self.peak, sum(private_bytes(pid) for pid in pids))


def prepare_here(folder: str, cache: str, image_size: int) -> dict:
    """Prepare `folder` in this process: seconds, RSS before, peak RSS and the peak RSS added,
    its decoding workers' peak private memory."""
    from trainables.data.load import load_dataset

    # the peak from here on, not the imports' (torch's) transient peak before
    Path("/proc/self/clear_refs").write_text("5")
    before, cpu = proc_status()["VmRSS"], cpu_seconds()
    workers = ChildMemory()
    workers.start()
    start = time.perf_counter()
    data = load_dataset(folder, image_size=image_size, cache_dir=Path(cache))
    seconds = time.perf_counter() - start
    workers.done.set()
    workers.join()
    images = sum(len(s) for s in (data.train, data.val, data.test))
    peak = proc_status()["VmHWM"]
    return {"seconds": seconds, "cpu": cpu_seconds() - cpu, "before": before, "peak": peak,
            "added": max(0, peak - before), "workers": workers.peak, "images": images,
            "array_bytes": images * 3 * image_size**2}


def cpu_seconds() -> float:
    """CPU time of this process and its ended children (the decoding workers, once joined)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                      resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def prepare_cold(folder: Path, cache: Path, image_size: int, repeats: int) -> dict:
    """`prepare_here` in a fresh process with an empty cache, `repeats` times: the fastest
    time and CPU time (other work on the machine only adds), the highest memory."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(cache, ignore_errors=True)
        runs.append(in_fresh_process(f"prepare_here({str(folder)!r}, {str(cache)!r}, "
                                     f"{image_size})"))
    best = {k: min(r[k] for r in runs) for k in ("seconds", "cpu")}
    worst = {k: max(r[k] for r in runs) for k in ("peak", "added", "workers")}
    return {**runs[-1], **best, **worst, "cache_bytes": folder_bytes(cache)}


def _plasma() -> tuple[float, int]:
    """(MiB, objects) in this Ray cluster's object store, as `ray memory --stats-only` says."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    line = next(line for line in text.splitlines() if "Plasma memory usage" in line)
    words = line.replace(",", "").split()
    return float(words[3]) * (1024 if words[4] == "GiB" else 1), int(words[5])


def _probe(config: dict, *, settings, data, weights, features=None) -> None:
    """Stands in for train_transfer: reads every image the way a trial gets them."""
    from ray import tune

    before = proc_status()
    total = int(data.train.images.sum(dtype=np.int64) + data.val.images.sum(dtype=np.int64))
    after = proc_status()
    tune.report({"val_acc": 0.5, "best_val_acc": 0.5, "best_epoch": 1, "epoch": 1,
                 "writeable": bool(data.train.images.flags.writeable), "checksum": total,
                 "anon_added": after["RssAnon"] - before["RssAnon"],
                 "shared": after["RssShmem"]})


def object_store_here(folder: str, cache: str, image_size: int, storage: str) -> dict:
    """Load `folder` (cached), put it as a search does, run two trials through make_trainable."""
    import ray
    from ray import tune

    from search import tuning
    from search.pretraining import StageOutputs
    from search.spec import parse_spec
    from trainables.data.load import load_dataset

    before = proc_status()["RssAnon"]
    data = load_dataset(folder, image_size=image_size, cache_dir=Path(cache))
    loaded = proc_status()["RssAnon"]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        started = proc_status()["RssAnon"]
        data_ref = ray.put(data.for_search())  # what search/driver.py's run_search does
        put = proc_status()["RssAnon"]
        after_put = _plasma()
        spec = parse_spec(["--strategy", "scratch", "--storage", storage, "--name", "big"])
        tuning.train_transfer = _probe  # make_trainable wraps it, data and all, as for a search
        stages = StageOutputs({"scratch": None}, {"scratch": None}, {}, [])
        trainable = tuning.make_trainable(spec, "scratch", data_ref, stages)
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=2),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
        with contextlib.redirect_stdout(io.StringIO()):  # Tune's lines; ours is the last one
            grid = tuner.fit()
        after_trials = _plasma()
    finally:
        ray.shutdown()
    keys = ("writeable", "anon_added", "shared", "checksum")
    trials = [{k: r.metrics[k] for k in keys} for r in grid]
    return {"arrays": data.train.images.nbytes + data.val.images.nbytes,
            "driver_load": loaded - before, "driver_put": put - started,
            "after_put": after_put, "after_trials": after_trials, "trials": trials}


def in_fresh_process(call: str, module: str = "bench.big_data") -> dict:
    """Run `call` (an expression of `module`) in a new Python and return its dict."""
    code = f"import json; from {module} import *; print(json.dumps({call}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{call} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the benchmark --------------------------------------------------------------------------

def measure(counts: tuple[int, ...] = COUNTS, image_sizes: tuple[int, ...] = (32, 64),
            jpeg_size: int = 256, keep: Path | None = None, repeats: int = 3) -> dict:
    """Every number of the table, each preparation with an empty cache `repeats` times. The
    JPEGs go to `keep` when given (and stay), else to a temporary folder removed at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = keep or tmp / "images"
        largest = max(counts)
        full = images / f"{largest}"
        made = None if full.is_dir() else generate(full, largest, jpeg_size)
        for count in counts:
            if not (images / f"{count}").is_dir():
                link_subset(full, images / f"{count}", count)
        runs, size = {}, min(image_sizes)  # `size`: the warm runs' and the object store's
        for each in image_sizes:
            for count in sorted(counts):
                cache = tmp / f"cache-{each}-{count}"
                runs[(each, count)] = prepare_cold(images / str(count), cache, each, repeats)
                if (each, count) != (size, largest):  # kept for the warm runs below
                    shutil.rmtree(cache)
        args = f"{str(full)!r}, {str(tmp / f'cache-{size}-{largest}')!r}, {size}"
        warm = in_fresh_process(f"prepare_here({args})")
        store = in_fresh_process(f"object_store_here({args}, {str(tmp / 'storage')!r})")
        return {"counts": sorted(counts), "image_sizes": list(image_sizes), "runs": runs,
                "generated": made, "jpeg_bytes": folder_bytes(full), "jpeg_size": jpeg_size,
                "warm": warm, "store": store, "cores": os.cpu_count()}


def _mb(n: float) -> str:
    return f"{n / MB:,.0f} MB"


def preparation_rows(m: dict) -> list[tuple[str, str, str]]:
    """Per image size and count: time (and per 1k images against the smallest count), the RSS
    it added at its peak, and the cache it wrote."""
    rows = []
    for size in m["image_sizes"]:
        first = m["runs"][(size, m["counts"][0])]
        per_k0, cpu_k0 = (first[k] / m["counts"][0] * 1000 for k in ("seconds", "cpu"))
        for count in m["counts"]:
            run, name = m["runs"][(size, count)], f"{count:,} images at {size} px"
            per_k, cpu_k = (run[k] / count * 1000 for k in ("seconds", "cpu"))
            rows.append((f"{name}: preparation, empty cache", f"{run['seconds']:.1f} s",
                         f"per 1k images {per_k:.2f} s, {per_k / per_k0:.2f}x the smallest's; "
                         f"CPU {cpu_k:.2f} s, {cpu_k / cpu_k0:.2f}x"))
        for count in m["counts"]:
            run, name = m["runs"][(size, count)], f"{count:,} images at {size} px"
            rows.append((f"{name}: peak RSS, preparing process", f"+{_mb(run['added'])}",
                         f"of {_mb(run['peak'])}; decoded arrays {_mb(run['array_bytes'])}; "
                         f"its decoding workers {_mb(run['workers'])} private"))
        for count in m["counts"]:
            run, name = m["runs"][(size, count)], f"{count:,} images at {size} px"
            rows.append((f"{name}: cache on disk", _mb(run["cache_bytes"]),
                         f"{run['cache_bytes'] / run['array_bytes']:.2f}x the decoded arrays"))
    return rows


def store_rows(m: dict) -> list[tuple[str, str, str]]:
    """The warm preparation, and the search's copy in Ray's object store."""
    largest, size, s = m["counts"][-1], m["image_sizes"][0], m["store"]
    mib = s["arrays"] / MB
    trials = s["trials"]
    return [
        (f"{largest:,} images at {size} px: preparation, warm cache",
         f"{m['warm']['seconds']:.2f} s", f"peak RSS +{_mb(m['warm']['added'])}"),
        ("driver heap added by loading it (cached) / by ray.put",
         f"{_mb(s['driver_load'])} / {_mb(s['driver_put'])}", "RssAnon"),
        ("object store after ray.put(data.for_search())",
         f"{s['after_put'][0]:,.0f} MiB", f"{s['after_put'][1]} object(s); train+val arrays "
         f"{mib:,.0f} MiB: {s['after_put'][0] / mib:.2f}x"),
        ("object store after 2 trials through make_trainable",
         f"{s['after_trials'][0]:,.0f} MiB", f"{s['after_trials'][1]} object(s): "
         f"{s['after_trials'][0] / mib:.2f}x the arrays"),
        ("each trial, reading every image: heap added",
         " / ".join(_mb(t["anon_added"]) for t in trials),
         "read-only arrays in shared memory" if not any(t["writeable"] for t in trials)
         else "WRITEABLE: a private copy"),
    ]


def table(m: dict) -> list[tuple[str, str, str]]:
    """(measure, value, ratio) rows."""
    largest = m["counts"][-1]
    made = ("already there" if m["generated"] is None
            else f"made in {m['generated']:.0f} s on {m['cores']} cores")
    head = [(f"JPEGs of {m['jpeg_size']} px, {CLASSES} classes (largest folder)",
             f"{largest:,}", f"{_mb(m['jpeg_bytes'])}, {made}")]
    return head + preparation_rows(m) + store_rows(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)),
                        help="image counts, comma-separated (each a multiple of 10)")
    parser.add_argument("--image-sizes", default="32,64", help="--image-size values to prepare")
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the JPEGs")
    parser.add_argument("--keep", type=Path, default=None,
                        help="make the JPEGs here and keep them (reused when there)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="preparations per count and size; the fastest is shown")
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check the script")
    args = parser.parse_args()
    if args.quick:
        m = measure(**QUICK, keep=args.keep)
    else:
        counts = tuple(int(c) for c in args.counts.split(","))
        sizes = tuple(int(s) for s in args.image_sizes.split(","))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.keep or tempfile.gettempdir()).free
        if free < max(counts) * 20_000:
            parser.error(f"{_mb(free)} free: too little for {max(counts):,} JPEGs and caches")
        m = measure(counts, sizes, args.jpeg_size, args.keep, args.repeats)
    print(format_table(table(m)))


if __name__ == "__main__":
    main()
