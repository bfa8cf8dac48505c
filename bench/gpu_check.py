"""`python bench/gpu.py --check`: prove a GPU machine end to end, each part PASS or FAIL.

    python bench/gpu.py --check --out DIR
    python bench/gpu.py --check --parts search,predict    # some parts only
    python bench/gpu.py --check --device cpu    # the same parts, small, on a CPU (a slow test)

1. tests: the gpu-marked tests and the quick suite (`pytest -m "gpu or not slow"`), on parallel
   workers where pytest-xdist is installed; on a CPU, only the gpu-marked tests of the device
   rules, which skip there: a check that the part runs pytest and reads its result.
2. search: a packed demo search (`--gpus-per-trial 0.25`) of scratch and frozen (with its
   supervised stage and features), ending with the final evaluation over 2 seeds (on a CPU,
   frozen alone and 1 seed).
3. predict: search/predict.py on four test images, with the model the evaluation kept.
4. report: analysis/report.py on that search.
5. table: bench/gpu.py's throughput table, with nothing else running (on a CPU without its
   --compile rows).

Part 1 runs beside parts 2 to 4 (the tests mostly on the CPU's cores, the search on the GPU),
and the table's data is prepared meanwhile; the table then runs alone. Each part has its own
timeout (TIMEOUT_S), which together bound the check at 8 minutes on a GPU, and a part that times
out is killed with its processes and fails. Each part's output goes to its log in --out, and
its line to summary.txt as it ends.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.gpu_sizes import CPU, GPU
from store.layout import EVAL_SUMMARY, MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
# per device: the search's arguments, and each part's timeout in seconds. On a CPU, frozen alone
# (its stage, its features, a Tuner, the final evaluation: every phase the GPU's search has) and
# one trial at a time: a Tuner starts one trial actor, which spends seconds of CPU importing
# torch and timm to train 40 images, and the suite's searches prove the rest on a CPU
SEARCH = {
    "cuda": ["--data", "demo", "--strategy", "scratch,frozen", "--samples", "2",
             "--max-epochs", "1", "--pretrain-epochs", "2", "--gpus-per-trial", "0.25",
             "--cpus-per-trial", "2"],
    "cpu": ["--data", "demo:4", "--strategy", "frozen", "--samples", "2",
            "--max-epochs", "1", "--pretrain-epochs", "1", "--backbone", "test_resnet",
            "--cpus-per-trial", "1", "--no-dashboard", "--max-concurrent", "1"],
}
# the final evaluation's seeds: on a CPU one, as a check of the check (the suite's shared
# search evaluates over 2)
FINAL_SEEDS = {"cuda": 2, "cpu": 1}
# on one GPU: the tests beside search + predict + report (at most 240 s), then the table (240
# s): 480 s in all. The table's data, prepared meanwhile, is left to the table if not ready.
PREPARE_WAIT_S = 0
TIMEOUT_S = {"cuda": {"tests": 220, "search": 200, "predict": 20, "report": 20, "table": 240},
             "cpu": {"tests": 300, "search": 600, "predict": 120, "report": 300, "table": 900}}


@dataclass
class Part:
    name: str
    ok: bool
    seconds: float
    detail: str


def run(command: list[str], log: Path, timeout_s: float, **kwargs) -> int | None:
    """The command's exit code, its output in `log`; None when it ran past `timeout_s`, after
    which it is killed with every process it started."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, **kwargs)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            out.write(f"\n[killed after {timeout_s:g} s]\n")
            return None


def outcome(name: str, code: int | None, start: float, detail: str, ok: bool = True) -> Part:
    if code is None:
        return Part(name, False, time.perf_counter() - start, "timed out")
    return Part(name, code == 0 and ok, time.perf_counter() - start,
                detail if code == 0 else f"exit code {code}; {detail}")


def last_line(log: Path, starting: str = "") -> str:
    """The log's last non-empty line (that starts with `starting`)."""
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.strip() and line.startswith(starting)]
    return lines[-1].strip("= ") if lines else ""


def tests(device: str, out: Path) -> Part:
    start = time.perf_counter()
    # on a CPU the gpu-marked tests skip; the suite runs the rest of the device tests anyway
    marks = "gpu" if device == "cpu" else "gpu or not slow"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks]
    if device == "cpu":
        command += ["tests/test_device.py"]
    elif importlib.util.find_spec("xdist"):
        command += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
    code = run(command, out / "tests.log", TIMEOUT_S[device]["tests"], cwd=ROOT)
    return outcome("tests", code, start, last_line(out / "tests.log"))


def search(device: str, out: Path, tmp: Path) -> Part:
    start = time.perf_counter()
    command = [sys.executable, str(ROOT / "search" / "run.py"), *SEARCH[device],
               "--final-eval", str(FINAL_SEEDS[device]), "--storage", str(tmp / "runs"),
               "--name", "check", "--cache-dir", str(tmp / "cache"), "--quiet"]
    code = run(command, out / "search.log", TIMEOUT_S[device]["search"], cwd=tmp)
    summary = tmp / "runs" / "check" / EVAL_SUMMARY
    return outcome("search", code, start, f"final evaluation: {summary.is_file()}; "
                   f"{last_line(out / 'search.log', 'time: ')}", ok=summary.is_file())


def predict(device: str, out: Path, tmp: Path) -> Part:
    from PIL import Image

    from trainables.data.load import load_dataset

    start = time.perf_counter()
    models = sorted((tmp / "runs" / "check" / MODEL_DIR).glob("*"))
    if not models:
        return Part("predict", False, 0.0, "no kept model: the search failed")
    data = load_dataset(SEARCH[device][1], cache_dir=tmp / "cache")
    paths = []
    for i, image in enumerate(data.test.images[:4]):
        paths.append(str(tmp / f"test{i}.png"))
        Image.fromarray(image.transpose(1, 2, 0)).save(paths[-1])
    log = out / "predict.log"
    code = run([sys.executable, str(ROOT / "search" / "predict.py"), str(models[0]), *paths],
               log, TIMEOUT_S[device]["predict"])
    answered = [line for line in log.read_text().splitlines() if line.split("\t")[0] in paths]
    return outcome("predict", code, start, f"{len(answered)} of {len(paths)} images classified "
                   f"by {models[0].name}'s model", ok=len(answered) == len(paths))


def report(device: str, out: Path, tmp: Path) -> Part:
    start = time.perf_counter()
    exp = tmp / "runs" / "check"
    code = run([sys.executable, str(ROOT / "analysis" / "report.py"), str(exp)],
               out / "report.log", TIMEOUT_S[device]["report"])
    written = exp / "report" / "report.md"
    plots = len(list(written.parent.glob("*.png")))
    return outcome("report", code, start, f"report.md with {plots} plots",
                   ok=written.is_file())


def table(device: str, out: Path, cache: Path) -> Part:
    start = time.perf_counter()
    code = run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", device,
                "--cache-dir", str(cache)], out / "table.log", TIMEOUT_S[device]["table"],
               cwd=ROOT)
    return outcome("table", code, start, "the throughput table below")


def prepare_table_data(device: str, cache: Path) -> subprocess.Popen:
    """The table's search data, prepared (and cached) while the other parts run."""
    cfg = GPU if device == "cuda" else CPU
    code = ("from trainables.data.load import load_dataset; load_dataset("
            f"{cfg['search_data']!r}, image_size={cfg['search_size']}, cache_dir={str(cache)!r})")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


PARTS = ("tests", "search", "predict", "report", "table")


def main(device: str, out: str | None, parts: str | None = None) -> int:
    """Run the check's parts (all, or the comma-separated `parts`); 0 if every one passed."""
    wanted = PARTS if parts is None else tuple(p.strip() for p in parts.split(","))
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        print(f"gpu.py: error: --parts {parts}: unknown {', '.join(unknown)}; the parts are "
              f"{', '.join(PARTS)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        out_dir = Path(out) if out else tmp / "logs"
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = out_dir / "summary.txt"
        summary.write_text(f"bench/gpu.py --check --device {device}\n")

        def done(part: Part) -> Part:  # each part's line as it ends: a killed check keeps them
            with open(summary, "a") as file:
                file.write(f"  {'PASS' if part.ok else 'FAIL'}  {part.name:<8} "
                           f"{part.seconds:6.0f} s  {part.detail}\n")
            return part

        preparing = prepare_table_data(device, tmp / "table-cache") if "table" in wanted \
            else None
        ran: dict[str, Part] = {}
        beside = threading.Thread(target=lambda: ran.update(tests=done(tests(device,
                                                                             out_dir))))
        if "tests" in wanted:
            beside.start()
        for name, part in (("search", search), ("predict", predict), ("report", report)):
            if name in wanted:
                ran[name] = done(part(device, out_dir, tmp))
        if "tests" in wanted:
            beside.join()
        if preparing is not None:
            try:  # the table prepares whatever is missing itself, within its own timeout
                preparing.wait(PREPARE_WAIT_S)
            except subprocess.TimeoutExpired:
                preparing.kill()
            ran["table"] = done(table(device, out_dir, tmp / "table-cache"))
        with open(summary, "a") as file:
            file.write(f"{time.perf_counter() - started:.0f} s in all\n")
            if "table" in ran:
                file.write("\n" + (out_dir / "table.log").read_text(errors="replace"))
        print(summary.read_text())
    return 0 if all(p.ok for p in ran.values()) else 1
