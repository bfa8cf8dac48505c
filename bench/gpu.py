"""Benchmark the GPU path, or check a GPU machine end to end.

    python bench/gpu.py            # the throughput table, about 3 minutes on one H200
    python bench/gpu.py --check    # every part on this GPU, each PASS or FAIL (bench/gpu_check.py)

The table:
1. One trial's training throughput: ResNet-18 at 224 px, batch 256, through the trials' own
   loop (trainables.loop.train_epoch: images resident on the GPU, bf16 autocast, channels last,
   cuDNN's autotuner), eager and under torch.compile, whose compile time is printed apart.
2. The bare loop alone at the search's size (128 px, batch 256): plain torch with the trials'
   precision and layout, no augmentation, no harness. The ceiling a search is measured against.
3. Packing where one trial cannot fill the GPU: at 32 px and batch 128, four quarter-GPU trials
   side by side (Ray tasks that wait for each other before timing) against one alone.
4. A packed search as a user runs it: 16 trials of up to 5 epochs on 9,000 images at 128 px
   (demo:900), four at a time (`--gpus-per-trial 0.25`). Its wall time split into data, Ray's
   start, stages, trials and finish (search/phases.py), and the rest: the interpreter,
   imports and checks before its data, and its exit after the finish; the images
   its trials trained per second during the trial phase, summed over the concurrent trials,
   against the bare loop; and the GPU's utilisation then (nvidia-smi every half second). The
   data is prepared once before, untimed: the search reads it from a warm cache, as a second
   search on the machine would.

Images in 1 to 3 are random uint8 (speed does not depend on content); each first epoch warms
up. `--device cpu` runs everything at tiny sizes on the CPU, with Ray's logical GPU for the
packing (two trials, not four): a check that the script works where no GPU is, not a number
about GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
import torch

from bench.gpu_sizes import CPU, GPU
from bench.tables import format_table
from trainables.compiled import compile_net
from trainables.device import (
    autocast,
    channels_last,
    hold_to_share,
    pick_device,
    release_gpu_memory,
)
from trainables.loop import train_epoch
from trainables.models import build_model, normalizer

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"wall_s": 40.0, "of_bare": 0.70}  # the packed search, on one GPU


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_images(images: int, size: int, device: torch.device):
    return (torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, device=device),
            torch.randint(0, 10, (images,), device=device))


def throughput(backbone: str, size: int, batch: int, images: int, epochs: int,
               compiled: bool = False, barrier=None, threads: int = 1,
               gpus_per_trial: float = 0.0) -> dict:
    """Training images per second of the trial loop (median epoch after a warm-up epoch),
    held to `gpus_per_trial` of the GPU's memory as a trial is."""
    torch.set_num_threads(threads)
    device = pick_device()
    hold_to_share(device, gpus_per_trial)
    torch.manual_seed(0)
    model = build_model(backbone, 10).to(device, memory_format=torch.channels_last)
    x, y = random_images(images, size, device)
    normalize = normalizer(model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    net, compile_s = (compile_net(model, x, None, batch_size=batch, normalize=normalize,
                                  device=device) if compiled else (model, 0.0))

    def epoch() -> float:
        return train_epoch(net, optimizer, x, y, batch_size=batch, policy="none",
                           normalize=normalize, loss_fn=torch.nn.CrossEntropyLoss(),
                           device=device, generator=torch.Generator().manual_seed(0)
                           ).images_per_s

    epoch()  # warm-up: allocator, cuDNN's autotuner
    if barrier is not None:  # packed trials time the same moments
        ray.get(barrier.arrive.remote())
        while not ray.get(barrier.ready.remote()):
            time.sleep(0.01)
    start = time.time()
    rates = [epoch() for _ in range(epochs)]
    return {"images_per_s": statistics.median(rates), "compile_s": compile_s, "start": start,
            "end": time.time(), "images": images * epochs, "device": device.type}


def bare(backbone: str, size: int, batch: int, images: int, epochs: int) -> float:
    """Images per second of a plain loop: the trials' precision and layout, nothing else."""
    device = pick_device()
    torch.manual_seed(0)
    model = build_model(backbone, 10).to(device, memory_format=torch.channels_last).train()
    x, y = random_images(images, size, device)
    normalize = normalizer(model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = images // batch

    def epoch() -> float:
        start = time.perf_counter()
        for begin in range(0, steps * batch, batch):
            with autocast(device):
                logits = model(channels_last(normalize(x[begin : begin + batch])))
            loss = torch.nn.functional.cross_entropy(logits.float(), y[begin : begin + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return steps * batch / (time.perf_counter() - start)

    epoch()
    return statistics.median(epoch() for _ in range(epochs))


@ray.remote
class Barrier:
    def __init__(self, parties: int):
        self.parties, self.arrived = parties, 0

    def arrive(self) -> None:
        self.arrived += 1

    def ready(self) -> bool:
        return self.arrived >= self.parties


def packed(k: int, cfg: dict) -> dict:
    """k trials of a quarter GPU each, side by side; their total images per second from the
    first one's start to the last one's end."""
    task = ray.remote(num_gpus=0.25, num_cpus=cfg["cpus_per_trial"])(throughput)
    barrier = Barrier.remote(k)
    runs = ray.get([task.remote(cfg["backbone"], cfg["packed_size"], cfg["packed_batch"],
                                cfg["packed_images"], cfg["epochs"], barrier=barrier,
                                threads=max(1, int(cfg["cpus_per_trial"])), gpus_per_trial=0.25)
                    for _ in range(k)])
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"trials": k, "images_per_s": sum(r["images"] for r in runs) / wall}


def sample_gpu(samples: list[tuple[float, float, float]], done: threading.Event) -> None:
    """(time, utilisation %, memory used MiB) every half second, from nvidia-smi."""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits"]
    while not done.wait(0.5):
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
            first = out.strip().splitlines()[0].split(",")
            samples.append((time.time(), float(first[0]), float(first[1])))
        except (subprocess.TimeoutExpired, IndexError, ValueError):
            continue  # a sample lost; the next one is half a second away


def search_command(cfg: dict, storage: Path, cache: Path, name: str) -> list[str]:
    return [sys.executable, str(ROOT / "search" / "run.py"), "--data", cfg["search_data"],
            "--image-size", str(cfg["search_size"]), "--strategy", "scratch",
            "--samples", str(cfg["search_samples"]), "--max-epochs", str(cfg["search_epochs"]),
            "--gpus-per-trial", str(cfg["gpus_per_trial"]),
            "--cpus-per-trial", str(cfg["cpus_per_trial"]), "--backbone", cfg["backbone"],
            "--storage", str(storage), "--name", name, "--cache-dir", str(cache), "--quiet"]


def packed_search(cfg: dict, tmp: Path, cache: Path) -> dict:
    """A whole search as a user runs it: wall time by phase, trial-phase throughput, GPU use."""
    from analysis import load_results
    from search.phases import TIMINGS_FILE
    from trainables.data.load import load_dataset

    # prepared once (or found in `cache`), before the clock starts
    data = load_dataset(cfg["search_data"], image_size=cfg["search_size"], cache_dir=cache)
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()
    if shutil.which("nvidia-smi"):
        threading.Thread(target=sample_gpu, args=(samples, done), daemon=True).start()
    start = time.perf_counter()
    run = subprocess.run(search_command(cfg, tmp / "runs", cache, "search"),
                         capture_output=True, text=True, cwd=tmp, timeout=1800)
    wall = time.perf_counter() - start
    done.set()
    if run.returncode:
        raise RuntimeError(f"the search failed ({run.returncode}):\n{run.stderr[-3000:]}")
    exp = tmp / "runs" / "search"
    timings = json.loads((exp / TIMINGS_FILE).read_text())
    trials = load_results(exp)
    epochs = timeline(exp, len(data.train))
    begin = timings["entered_at"]["trials"]
    during = [(u, m) for t, u, m in samples if begin <= t <= begin + timings["seconds"]["trials"]]
    return {"wall_s": wall, "seconds": timings["seconds"], "images": int(epochs["images"].sum()),
            "trial_epochs": len(epochs), "samples": during, "epochs": epochs,
            "batches": sorted(trials["batch_size"].unique().tolist())}


def timeline(exp: Path, train_images: int):
    """One row per trial-epoch: its trial, batch size, images trained, seconds training (at
    the epoch's own images_per_s) and seconds between its report and the one before (Tune's
    time_this_iter_s: the epoch, its evaluation, its checkpoint's copy, and for a first epoch
    the trial's setup)."""
    import pandas as pd

    from store.records import PARAMS_FILE, epoch_rows, trial_dirs

    rows = []
    for trial_dir in trial_dirs(exp, "scratch"):
        batch = json.loads((trial_dir / PARAMS_FILE).read_text())["batch_size"]
        trained = train_images - (train_images % batch == 1)  # a last batch of one is dropped
        for r in epoch_rows(trial_dir):
            rows.append({"trial": trial_dir.name, "epoch": r["training_iteration"],
                         "batch_size": batch, "images": trained,
                         "train_s": trained / r["images_per_s"],
                         "iteration_s": r["time_this_iter_s"], "reported_at": r["timestamp"]})
    return pd.DataFrame(rows)


def measure(cfg: dict, cache: Path | None = None) -> dict:
    m = {"cfg": cfg}
    one = (cfg["backbone"], cfg["size"], cfg["batch"], cfg["images"], cfg["epochs"])
    m["eager"] = throughput(*one)
    m["compiled"] = throughput(*one, compiled=True) if cfg.get("compile", True) else None
    m["bare"] = bare(cfg["backbone"], cfg["bare_size"], cfg["bare_batch"], cfg["images"],
                     cfg["epochs"])
    release_gpu_memory()  # the packed trials and the search may have the whole GPU
    gpus = 1 if torch.cuda.is_available() else 0
    k = cfg["packed_trials"]
    ray.init(num_cpus=k * cfg["cpus_per_trial"] if not gpus else None,
             num_gpus=None if gpus else 1, include_dashboard=False)  # logical GPU on a CPU
    try:
        m["packed"] = [packed(1, cfg), packed(k, cfg)]
    finally:
        ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        m["search"] = packed_search(cfg, Path(tmp), cache or Path(tmp) / "cache")
    return m


def verdict(met: bool) -> str:
    return "goal met" if met else "goal NOT met"


def search_rows(m: dict) -> list[tuple[str, str, str]]:
    cfg, search = m["cfg"], m["search"]
    gpu = torch.cuda.is_available()
    seconds = search["seconds"]
    start = search["wall_s"] - sum(seconds.values())
    rate = search["images"] / seconds["trials"]
    of_bare = rate / m["bare"]
    what = (f"{cfg['search_data']} at {cfg['search_size']} px, {cfg['search_samples']} trials "
            f"x up to {cfg['search_epochs']} epochs, --gpus-per-trial {cfg['gpus_per_trial']:g}")
    rows = [(f"search ({what}): wall time", f"{search['wall_s']:.1f} s",
             f"{verdict(search['wall_s'] <= GOALS['wall_s'])}: <= {GOALS['wall_s']:.0f} s"
             if gpu else ""),
            ("  start and exit: interpreter, imports, checks, Ray's shutdown", f"{start:.1f} s",
             "")]
    rows += [(f"  {name}", f"{s:.1f} s", "") for name, s in seconds.items()]
    rows += [("  images trained per second in the trial phase, all trials", f"{rate:,.0f} img/s",
              f"{of_bare:.2f}x the bare loop" + (
                  f", {verdict(of_bare >= GOALS['of_bare'])}: >= {GOALS['of_bare']:.2f}x"
                  if gpu else "")),
             ("  trial-epochs trained; batch sizes sampled", f"{search['trial_epochs']}",
              ", ".join(map(str, search["batches"]))),
             *where_trial_time_goes(search, cfg)]
    if search["samples"]:
        util = [u for u, _ in search["samples"]]
        rows += [("  GPU utilisation in the trial phase, mean / median",
                  f"{statistics.mean(util):.0f}% / {statistics.median(util):.0f}%",
                  f"{len(util)} samples every 0.5 s"),
                 ("  GPU memory used, peak", f"{max(m for _, m in search['samples']):,.0f} MiB",
                  "")]
    else:
        rows.append(("  GPU utilisation", "no nvidia-smi", ""))
    return rows


def where_trial_time_goes(search: dict, cfg: dict) -> list[tuple[str, str, str]]:
    """A trial's training rate inside its epochs, and what of the trial phase was training."""
    epochs = search["epochs"]
    slots = round(1 / cfg["gpus_per_trial"]) if cfg["gpus_per_trial"] else \
        int((os.cpu_count() or 1) // cfg["cpus_per_trial"])  # as many as Ray places at once
    slot_s = slots * search["seconds"]["trials"]
    in_trials = epochs["iteration_s"].sum()
    return [
        (f"  a trial's training rate inside its epochs, median ({slots} at once)",
         f"{(epochs['images'] / epochs['train_s']).median():,.0f} img/s", ""),
        (f"  of the {slots} slots' time in the trial phase: training epochs",
         f"{epochs['train_s'].sum() / slot_s:.0%}",
         f"{epochs['train_s'].sum():.1f} s of {slot_s:.1f} s"),
        ("  trials' other time: setup, evaluation, waiting on reports",
         f"{(in_trials - epochs['train_s'].sum()) / slot_s:.0%}", ""),
        ("  no trial running: actor starts, Tune between trials",
         f"{max(slot_s - in_trials, 0.0) / slot_s:.0%}", ""),
    ]


def table(m: dict) -> list[tuple[str, str, str]]:
    cfg, eager, compiled = m["cfg"], m["eager"], m["compiled"]
    what = f"{cfg['backbone']} at {cfg['size']} px, batch {cfg['batch']}, {eager['device']}"
    one, several = m["packed"]
    compile_rows = [
        (f"one trial, --compile ({what})", f"{compiled['images_per_s']:,.0f} img/s",
         f"{compiled['images_per_s'] / eager['images_per_s']:.2f}x eager"),
        ("  its compile time, apart from the epochs", f"{compiled['compile_s']:.1f} s", ""),
    ] if compiled else []
    return [
        (f"one trial, eager ({what})", f"{eager['images_per_s']:,.0f} img/s", ""),
        *compile_rows,
        (f"bare loop alone ({cfg['backbone']} at {cfg['bare_size']} px, batch "
         f"{cfg['bare_batch']})", f"{m['bare']:,.0f} img/s", "the search's ceiling"),
        (f"1 trial of a quarter GPU at {cfg['packed_size']} px, batch {cfg['packed_batch']}",
         f"{one['images_per_s']:,.0f} img/s", ""),
        (f"{several['trials']} packed trials of a quarter GPU at {cfg['packed_size']} px, "
         "total", f"{several['images_per_s']:,.0f} img/s",
         f"{several['images_per_s'] / one['images_per_s']:.2f}x one trial"),
        *search_rows(m),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: tiny sizes, a check that the script works")
    parser.add_argument("--check", action="store_true",
                        help="prove this machine end to end: tests, a search with its final "
                        "evaluation, predict, the report and this table, each PASS or FAIL")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="--check: where each part's log goes (default: a temporary folder)")
    parser.add_argument("--parts", default=None, metavar="P,...",
                        help="--check: only these parts (default: tests,search,predict,report,"
                        "table)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="the search's prepared data (default: a temporary folder)")
    parser.add_argument("--only-search", action="store_true",
                        help="measure the packed search alone (part 4)")
    parser.add_argument("--timeline", default=None, metavar="CSV",
                        help="write the search's trial-epochs, one per row, to CSV")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu.py: error: no CUDA GPU on this machine; run it where one is, or "
                    "with --device cpu to check the script at tiny sizes\n")
    if args.check:
        from bench import gpu_check

        return gpu_check.main(args.device, args.out, args.parts)
    from bench import gpu  # Ray pickles the tasks by reference to this module, not __main__

    cfg = GPU if args.device == "cuda" else CPU
    cache = Path(args.cache_dir) if args.cache_dir else None
    if args.only_search:  # the bare loop, its ceiling, and the search
        m = {"cfg": cfg, "bare": gpu.bare(cfg["backbone"], cfg["bare_size"], cfg["bare_batch"],
                                          cfg["images"], cfg["epochs"])}
        release_gpu_memory()  # the search's trials may have the whole GPU
        with tempfile.TemporaryDirectory() as tmp:
            m["search"] = gpu.packed_search(cfg, Path(tmp), cache or Path(tmp))
        rows = gpu.search_rows(m)
    else:
        m = gpu.measure(cfg, cache)
        rows = gpu.table(m)
    if args.timeline:
        m["search"]["epochs"].to_csv(args.timeline, index=False)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
