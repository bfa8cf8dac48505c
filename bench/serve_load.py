"""Benchmark the model service under load: requests per second and latency percentiles of a
real local service (`python search/serve.py`, with its own Ray, over HTTP), with @serve.batch on
and off (--no-batching), at 1 and at 16 concurrent clients.

    python bench/serve_load.py --requests 1000

Each client sends one image per request and waits for the answer before sending the next, as
a user's application would. The model is `--model DIR` (a kept model), else an untrained
`--backbone` at `--image-size` (the weights change no timing; resnet18 at 32 px are the search's
defaults). The clients run in this process, the service in its own; each cell is warmed up
first. The ratio that matters is batching on / off at 16 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.tables import format_table

ROOT = Path(__file__).resolve().parents[1]

GOAL = 2.0  # batching's requests/s over no batching at 16 clients, on a CPU
WARMUP = 200  # requests before each cell: every batch size's kernels are set up


def make_model(backbone: str, image_size: int, folder: Path) -> Path:
    """An untrained `backbone` on the demo's classes, saved as the final evaluation keeps one."""
    from trainables.config import TrialConfig
    from trainables.data.demo import load_demo
    from trainables.export import save_model
    from trainables.models import build_model

    classes = load_demo(train_per_class=1, image_size=image_size).classes
    model = build_model(backbone, len(classes)).eval()
    hp = TrialConfig(lr=0.01, batch_size=64, augment="none", weight_decay=0.0)
    return save_model(folder / backbone, model, backbone=backbone, hp=hp, classes=classes,
                      image_size=image_size, extra={"strategy": "scratch"})


def request_images(image_size: int, count: int = 16) -> list[bytes]:
    """Demo test images as PNG files a little larger than the model's size, so every request
    pays predict's resize and crop as a user's photo would."""
    from PIL import Image

    from trainables.data.demo import load_demo

    demo = load_demo(train_per_class=1, image_size=image_size)
    files = []
    for array in np.asarray(demo.test.images)[:count]:
        out = io.BytesIO()
        Image.fromarray(array.transpose(1, 2, 0)).resize(
            (image_size * 3 // 2, image_size * 5 // 4)).save(out, format="PNG")
        files.append(out.getvalue())
    return files


async def send(url: str, images: list[bytes], count: int, clients: int
               ) -> tuple[float, list[float], int]:
    """(wall seconds, per-request latencies, failed requests) of `count` requests from
    `clients` concurrent clients, each sending its next request when its last is answered."""
    import aiohttp

    latencies, failed, numbers = [], 0, iter(range(count))  # shared: each request once

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        for i in numbers:
            form = aiohttp.FormData()
            form.add_field("file", images[i % len(images)], filename=f"{i}.png",
                           content_type="image/png")
            start = time.perf_counter()
            async with session.post(f"{url}/predict", data=form) as response:
                await response.read()
            if response.status == 200:  # a refusal's latency says nothing of the service's
                latencies.append(time.perf_counter() - start)
            else:
                failed += 1

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - start, latencies, failed


def image_size_of(model: Path) -> int:
    return int(json.loads((model / "model.json").read_text())["image_size"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def service(model: Path, flags: list[str], log: Path, timeout: float = 300):
    """`python search/serve.py MODEL FLAGS` on a free loopback port, as a user starts it; yields
    its URL once it serves, and stops it with Ctrl-C (SIGINT) after."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "search" / "serve.py"), str(model),
                                    "--port", str(port), *flags], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops it" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve.py did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(model: Path, requests: int, clients: tuple[int, ...], batch_size: int,
            gpus: float) -> dict[tuple[str, int], dict]:
    """{(mode, clients): requests/s, latency percentiles (ms), failures}: one service per mode,
    the same but batching, each cell after a warm-up."""
    images = request_images(image_size_of(model))
    flags = ["--max-batch-size", str(batch_size), "--gpus-per-replica", str(gpus)]
    results = {}
    with tempfile.TemporaryDirectory() as logs:
        for mode in ("on", "off"):
            extra = [] if mode == "on" else ["--no-batching"]
            with service(model, flags + extra, Path(logs) / f"{mode}.log") as url:
                for count in clients:
                    asyncio.run(send(url, images, min(WARMUP, requests), count))
                    wall, latencies, failed = asyncio.run(send(url, images, requests, count))
                    ms = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
                    results[(mode, count)] = {"rps": requests / wall, "p50": ms[0],
                                              "p95": ms[1], "p99": ms[2], "failed": failed}
    return results


def table(results: dict[tuple[str, int], dict], requests: int, device: str) -> str:
    rows = []
    for (mode, clients), r in results.items():
        name = f"{device}, batching {mode}, {clients} client(s)"
        rows.append((f"{name}: requests/s", f"{r['rps']:.1f}", ""))
        rows.append((f"{name}: latency p50 / p95 / p99 (ms)",
                     f"{r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f}", ""))
        if r["failed"]:
            rows.append((f"{name}: failed requests", f"{r['failed']} of {requests}", ""))
    for clients in sorted({c for _, c in results}):
        on, off = results[("on", clients)]["rps"], results[("off", clients)]["rps"]
        verdict = f" (goal >= {GOAL:g}x: {'met' if on / off >= GOAL else 'MISSED'})" \
            if clients == 16 and device == "cpu" else ""
        rows.append((f"{device}, batching on / off at {clients} client(s): requests/s", "",
                     f"{on / off:.2f}x{verdict}"))
    return format_table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a kept model folder (default: an untrained "
                        "--backbone)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000, help="per cell (default: 1000)")
    parser.add_argument("--clients", default="1,16", help="concurrent clients per cell")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--gpus-per-replica", type=float, default=0.0,
                        help="1: the replica on a GPU (a GPU row)")
    args = parser.parse_args(argv)
    clients = tuple(int(c) for c in args.clients.split(","))
    device = "gpu" if args.gpus_per_replica > 0 else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(args.backbone, args.image_size, Path(tmp))
        results = measure(model, args.requests, clients, args.max_batch_size,
                          args.gpus_per_replica)
        size = image_size_of(model)
    print(f"{model.name if args.model else args.backbone} at {size} px, one replica, "
          f"{args.requests} one-image requests per cell, --max-batch-size "
          f"{args.max_batch_size}")
    print(table(results, args.requests, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
