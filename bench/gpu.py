"""Benchmark the GPU path: one trial's training throughput, packed trials, a whole demo search.

    python bench/gpu.py

1. One trial's training throughput: ResNet-18 at 224 px through the trials' own loop
   (trainables.loop.train_epoch: uint8 images resident on the GPU, bf16 autocast, channels
   last, cuDNN's autotuner), eager and under torch.compile, whose compile time is printed apart.
   Images are random uint8 (speed does not depend on content); the first epoch warms up.
2. Packed trials: the same loop at 64 px as Ray tasks of a quarter GPU each, one alone and
   then four side by side (they wait for each other before timing); total images per second.
3. A whole `--strategy all` demo search at 64 px with `--gpus-per-trial 0.25`: its wall time,
   and the GPU's utilisation and memory sampled with nvidia-smi every half second.

`--device cpu` runs the same three measurements on the CPU at tiny sizes, with Ray's logical
GPU for the packing: a check that the script works where no GPU is (the tests), not a number
about GPUs.
"""

from __future__ import annotations

import argparse
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

from bench.tables import format_table
from trainables.compiled import compile_net
from trainables.device import pick_device
from trainables.loop import train_epoch
from trainables.models import build_model, normalizer

ROOT = Path(__file__).resolve().parents[1]
GPU = {"backbone": "resnet18", "size": 224, "batch": 256, "images": 20480, "epochs": 3,
       "packed_size": 64, "packed_images": 20480, "search_samples": 8, "search_epochs": 6,
       "pretrain_epochs": 10, "cpus_per_trial": 3, "data": "demo"}
CPU = {"backbone": "test_resnet", "size": 32, "batch": 32, "images": 128, "epochs": 2,
       "packed_size": 32, "packed_images": 128, "search_samples": 1, "search_epochs": 1,
       "pretrain_epochs": 1, "cpus_per_trial": 0.5, "data": "demo:4"}


def throughput(backbone: str, size: int, batch: int, images: int, epochs: int,
               compiled: bool = False, barrier=None, threads: int = 1) -> dict:
    """Training images per second of the trial loop (median epoch after a warm-up epoch)."""
    torch.set_num_threads(threads)
    device = pick_device()
    torch.manual_seed(0)
    model = build_model(backbone, 10).to(device, memory_format=torch.channels_last)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (images,), device=device)
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
    runs = ray.get([task.remote(cfg["backbone"], cfg["packed_size"], cfg["batch"],
                                cfg["packed_images"], cfg["epochs"], barrier=barrier,
                                threads=max(1, int(cfg["cpus_per_trial"])))
                    for _ in range(k)])
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"trials": k, "images_per_s": sum(r["images"] for r in runs) / wall}


def sample_gpu(samples: list[tuple[float, float]], done: threading.Event) -> None:
    """(utilisation %, memory used MiB) every half second, from nvidia-smi."""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits"]
    while not done.wait(0.5):
        out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
        first = out.strip().splitlines()[0].split(",")
        samples.append((float(first[0]), float(first[1])))


def demo_search(cfg: dict, gpus_per_trial: float, tmp: Path) -> dict:
    """Wall time of a whole `--strategy all` demo search, and the GPU's samples meanwhile."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_gpu, args=(samples, done), daemon=True)
    if shutil.which("nvidia-smi"):
        sampler.start()
    command = [sys.executable, str(ROOT / "search" / "run.py"), "--data", cfg["data"],
               "--strategy", "all", "--image-size", str(cfg["packed_size"]),
               "--samples", str(cfg["search_samples"]), "--max-epochs",
               str(cfg["search_epochs"]), "--gpus-per-trial", str(gpus_per_trial),
               "--cpus-per-trial", str(cfg["cpus_per_trial"]),
               "--pretrain-epochs", str(cfg["pretrain_epochs"]), "--backbone", cfg["backbone"],
               "--storage", str(tmp / "runs"), "--name", "demo",
               "--cache-dir", str(tmp / "cache"), "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=tmp, timeout=3600)
    wall = time.perf_counter() - start
    done.set()
    return {"wall_s": wall, "samples": samples}


def measure(cfg: dict) -> dict:
    m = {"cfg": cfg}
    one = (cfg["backbone"], cfg["size"], cfg["batch"], cfg["images"], cfg["epochs"])
    m["eager"] = throughput(*one)
    m["compiled"] = throughput(*one, compiled=True)
    gpus = 1 if torch.cuda.is_available() else 0
    ray.init(num_cpus=4 * cfg["cpus_per_trial"] if not gpus else None,
             num_gpus=None if gpus else 1, include_dashboard=False)  # logical GPU on a CPU
    try:
        m["packed"] = [packed(1, cfg), packed(4, cfg)]
    finally:
        ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        m["search"] = demo_search(cfg, 0.25 if gpus else 0.0, Path(tmp))
    return m


def table(m: dict) -> list[tuple[str, str, str]]:
    cfg, eager, compiled = m["cfg"], m["eager"], m["compiled"]
    what = f"{cfg['backbone']} at {cfg['size']} px, batch {cfg['batch']}, {eager['device']}"
    one, four = m["packed"]
    util = [u for u, _ in m["search"]["samples"]]
    rows = [
        (f"one trial, eager ({what})", f"{eager['images_per_s']:,.0f} img/s", ""),
        (f"one trial, --compile ({what})", f"{compiled['images_per_s']:,.0f} img/s",
         f"{compiled['images_per_s'] / eager['images_per_s']:.2f}x eager"),
        ("  its compile time, apart from the epochs", f"{compiled['compile_s']:.1f} s", ""),
        (f"1 trial of a quarter GPU at {cfg['packed_size']} px", f"{one['images_per_s']:,.0f}"
         " img/s", ""),
        (f"4 packed trials of a quarter GPU at {cfg['packed_size']} px, total",
         f"{four['images_per_s']:,.0f} img/s",
         f"{four['images_per_s'] / one['images_per_s']:.2f}x one trial"),
        (f"{cfg['data']} search, --strategy all, {cfg['search_samples']} trials each, "
         f"{cfg['search_epochs']} epochs, {cfg['packed_size']} px: wall time",
         f"{m['search']['wall_s']:.0f} s", ""),
    ]
    if util:
        memory = max(mem for _, mem in m["search"]["samples"])
        rows += [("  GPU utilisation, mean / median of samples every 0.5 s",
                  f"{statistics.mean(util):.0f}% / {statistics.median(util):.0f}%",
                  f"{len(util)} samples"),
                 ("  GPU memory used, peak", f"{memory:,.0f} MiB", "")]
    else:
        rows.append(("  GPU utilisation", "no nvidia-smi", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: tiny sizes, a check that the script works")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu.py: error: no CUDA GPU on this machine; run it where one is, or "
                    "with --device cpu to check the script at tiny sizes\n")
    from bench import gpu  # Ray pickles the tasks by reference to this module, not __main__

    print(format_table(gpu.table(gpu.measure(GPU if args.device == "cuda" else CPU))))


if __name__ == "__main__":
    main()
