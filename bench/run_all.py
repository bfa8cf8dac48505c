"""Run every benchmark and write bench/README.md: one table per benchmark, with the machine,
the date and the command that produced it.

    python bench/run_all.py

Each benchmark runs as its own process (`python bench/NAME.py ...`), as a user would run it,
and its printed table goes into the README as is. `--only NAME` runs some of them; `--quick`
gives each tiny inputs (a check that every script still produces its table, not a
measurement); `--out FILE` writes elsewhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = ["--backbone", "test_resnet"]
# name -> (what it measures, its arguments, tiny arguments for --quick)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "data_pipeline": (
        "preparing an ImageFolder (first and cached), images decoded by a search's processes, "
        "and the harness's training epoch against a bare loop", ["--repeats", "6"],
        [*TINY, "--per-class", "20", "--size", "48", "--batch-size", "16",
         "--epoch-images", "64", "--repeats", "1"]),
    "frozen_fast_path": (
        "a frozen backbone's head trained on cached features against the full frozen forward",
        [], [*TINY, "--per-class", "8", "--repeats", "1"]),
    "trial_epoch": (
        "a whole trial epoch between two Tune reports (train, evaluate, checkpoint, report) "
        "against a bare loop, the disk a trial-epoch writes, and how an experiment's disk grows "
        "with its trials", [],
        [*TINY, "--per-class", "4", "--epochs", "2", "--batch-size", "16", "--disk-trials",
         "1", "--augments", "none"]),
    "stage_runs": (
        "pretraining stages run per experiment, against trials per strategy, with an empty and "
        "a warm cache", [], ["--samples", "1"]),
    "driver_overhead": (
        "trivial trials through the harness's Tuner wiring against the ideal wall time", [],
        ["--trials", "6", "--trial-seconds", "0.2"]),
    "actor_memory": (
        "RSS of the reused trial actors over one search", ["--series"],
        ["--trials", "3", "--max-epochs", "1", "--data", "demo:4", *TINY]),
    "demo_transfer": (
        "on the demo, the supervised stage, then scratch, frozen and fine-tuned targets over "
        "seeds", [], [*TINY, "--seeds", "1", "--per-class", "4", "--pretrain-epochs", "1",
                      "--epochs", "1"]),
    "gpu": (
        "the GPU path: one trial's ResNet-18 throughput at 224 px (eager and compiled), the bare "
        "loop, four packed trials against one at 32 px, and a whole packed search: its wall time "
        "by phase, its trials' images per second against the bare loop, GPU utilisation",
        [], ["--device", "cpu"]),
    "pretext_throughput": (
        "the colorization pretext stage's training throughput against the supervised stage's, "
        "same backbone, images, size and batch", [],
        [*TINY, "--images", "64", "--batch-size", "16", "--epochs", "1", "--image-size", "32"]),
    "search_quality": (
        "search efficiency: ASHA against FIFO on the same configs, TPE against random search at "
        "equal trial-epochs, on the demo and a generated ImageFolder over 3 seeds", [],
        ["--quick"]),
    "recipe": (
        "the search against a tuned recipe: the search as it was before presets and training "
        "tricks, the preset alone, and the search now, at equal trial-epochs, test accuracy over "
        "3 seeds on the CIFAR-10 slice and the demo", [], ["--quick"]),
    "colorization": (
        "colorization pretraining one change at a time (L1 or classification, early stopping, "
        "11x the pretext images), each followed by the same fine-tune and linear probe, against "
        "scratch: test accuracy over 3 seeds on the CIFAR-10 slice and the demo", [],
        [*TINY, "--seeds", "0", "--pretrain-epochs", "1", "--epochs", "1", "--per-class", "4",
         "--extra-images", "100", "--cifar", "none"]),
    "serve_load": (
        "the model service under load (`python search/serve.py`, over HTTP): requests/s and "
        "latency percentiles with @serve.batch on and off, at 1 and 16 concurrent clients", [],
        [*TINY, "--requests", "20"]),
    "big_data": (
        "an ImageFolder of up to 100,000 JPEGs: preparation time against image count, its peak "
        "memory, the cache on disk, and the search's one copy in Ray's object store", [],
        ["--quick"]),
    "pretext_data": (
        "colorization's pretext data at scale: 50,000 unlabeled JPEGs as --pretext-data, "
        "prepared, cached and memory-mapped, then streamed through the colorization stage of a "
        "real search", [], ["--quick"]),
}


NEEDS_GPU = {"gpu"}  # without --quick, these measure a GPU; skipped where none is


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").is_file() else platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def run_one(name: str, quick: bool) -> tuple[str, str, float]:
    """(the command line, its printed table, seconds)."""
    _, full, tiny = SUITE[name]
    args = tiny if quick else full
    command = ["python", f"bench/{name}.py", *args]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args],
                            cwd=HERE.parent, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return " ".join(command), result.stdout.rstrip(), time.perf_counter() - start


def section(name: str, command: str, table: str, seconds: float, quick: bool) -> str:
    """One benchmark's part of the README: what it measures, where and when, how, its table."""
    note = " (--quick: tiny inputs, not a measurement)" if quick else ""
    return "\n".join([f"## {name}", "", SUITE[name][0] + ".", "",
                      f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}"
                      f"{note}. Took {seconds:.0f} s.", "", f"    {command}", "",
                      *(f"    {line}" for line in table.splitlines()), ""])


def readme(sections: dict[str, str]) -> str:
    """The README: each benchmark's section in the suite's order."""
    head = ["# Benchmarks", "", "Written by `python bench/run_all.py`; `--only NAME` rewrites "
            "that benchmark's section and keeps the others as they were.", ""]
    return "\n".join(head + [sections[n] for n in SUITE if n in sections])


def read_sections(path: Path) -> dict[str, str]:
    """The sections of an existing README, by benchmark name."""
    if not path.is_file():
        return {}
    parts = path.read_text().split("\n## ")[1:]
    return {p.split("\n", 1)[0]: "## " + p.rstrip("\n") + "\n" for p in parts
            if p.split("\n", 1)[0] in SUITE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                        help=f"some of: {', '.join(SUITE)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny inputs, to check the scripts")
    parser.add_argument("--out", type=Path, default=HERE / "README.md")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SUITE)
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(SUITE)}")
    previous = read_sections(args.out)
    sections = dict(previous) if args.only else {}
    for name in names:
        if name in NEEDS_GPU and not args.quick and not has_gpu():
            # a table measured on a GPU stays until a GPU measures it again
            print(f"skipping {name}: no CUDA GPU on this machine", flush=True)
            sections[name] = previous.get(name) or (
                f"## {name}\n\n{SUITE[name][0]}.\n\nNot measured yet: the machine that wrote "
                "this file had no GPU.\n")
        else:
            print(f"running {name} ...", flush=True)
            sections[name] = section(name, *run_one(name, args.quick), args.quick)
        write(args.out, sections)  # after each: a later benchmark that fails loses no table
    print(f"wrote {args.out}")
    return 0


def write(out: Path, sections: dict[str, str]) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(readme(sections))
    tmp.replace(out)


if __name__ == "__main__":
    sys.exit(main())
