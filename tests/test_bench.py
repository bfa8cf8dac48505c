"""The benchmark scripts, on tiny inputs: each prints its table, and its numbers make sense.

No threshold on speed here (that is the benchmarks' job); only relations that hold on any
machine: a cache hit beats decoding, trials decode nothing, head-only beats the full forward.
"""

import math
from pathlib import Path

import pytest

from bench import data_pipeline, frozen_fast_path
from tests.helpers import TINY_MODEL
from trainables.device import pick_device


@pytest.mark.slow  # runs two 4-trial searches through search/run.py
def test_data_pipeline_table():
    m = data_pipeline.measure(per_class=20, size=48, backbone=TINY_MODEL, batch_size=16,
                              epoch_images=64, repeats=1)
    assert m["images"] == 200
    assert m["cached"] < m["first"], "a cache hit must beat decoding 200 JPEGs"
    assert m["cold"] == m["images"], "a cold search decodes every image exactly once"
    assert m["warm"] == 0, "a warm search decodes nothing: trials read the prepared arrays"
    for timing in m["epochs"].values():
        assert set(timing) == {"harness", "bare"}
        assert all(math.isfinite(t) and t > 0 for t in timing.values())

    rows = data_pipeline.table(m)
    assert [r[0].split(":")[0].split(" (")[0] for r in rows] == [
        "JPEGs in the ImageFolder", "first preparation", "cached preparation",
        "images decoded, 4-trial search, cold cache",
        "images decoded, 4-trial search, warm cache",
        "epoch, no augmentation", "epoch, crop+flip"]
    assert rows[3][2] == "1.00 per image" and rows[4][2] == "0.00 per image"
    text = data_pipeline.format_table(rows)
    assert text.splitlines()[0].split() == ["measure", "value", "ratio"]
    assert len(text.splitlines()) == len(rows) + 1


def test_frozen_fast_path_table():
    m = frozen_fast_path.measure(TINY_MODEL, batch_size=16, repeats=1, per_class=8)
    assert m["images"] == 80
    assert 0 < m["fast"] < m["full"], "the head alone must beat the full frozen forward"
    assert m["once"] > 0
    lines = frozen_fast_path.format_table(m, TINY_MODEL, 16, 1).splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"frozen {TINY_MODEL}, 80 demo images")
    assert lines[2].rstrip().endswith("x faster")


@pytest.mark.slow  # two tiny benchmarks, each in its own process, one of them on Ray
def test_run_all_writes_one_table_per_benchmark_with_machine_date_and_command(tmp_path):
    from bench import run_all

    out = tmp_path / "README.md"
    names = ["frozen_fast_path", "driver_overhead"]
    assert run_all.main(["--quick", "--only", ",".join(names), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("Machine: ") == 2 and text.count("not a measurement") == 2
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == names
    for name, section in zip(names, sections, strict=True):
        assert f"    python bench/{name}.py " in section  # the command, as a user types it
    frozen, driver = sections
    assert "x faster" in frozen
    assert "    measure " in driver  # its table
    assert "trials errored" in driver and driver.split("trials errored")[1].split()[0] == "0"


@pytest.mark.slow  # two 1-trial searches through search/run.py and the bare loop
def test_trial_epoch_table():
    from bench import trial_epoch

    m = trial_epoch.measure(TINY_MODEL, per_class=4, epochs=2, batch_size=16,
                            disk_trials=(1,), augments=("none",))
    (name, value, ratio), checkpoint, *disk = trial_epoch.table(m)
    assert name.startswith("trial epoch, augment none: harness / bare loop")
    assert ratio == f"{m['rows']['none']['harness'] / m['rows']['none']['bare']:.3f}x"
    assert checkpoint[0] == "disk written per trial-epoch (its checkpoint)"
    assert m["checkpoint_bytes"] > 0
    (d,) = m["disk"]
    assert d["trials"] == 1 and d["peak"] >= d["after"] > 0
    assert [row[0] for row in disk] == [
        "experiment of 1 trials x 2 epochs: most on disk during the search",
        "experiment of 1 trials x 2 epochs: on disk after it"]
    assert disk[-1][2] == "1.00x 1 trials"  # after the search, against the smallest


def test_stage_runs_counts_the_stages_an_experiment_ran(all_strategies_search, tmp_path):
    """bench/stage_runs.py's reading of a search, on the shared one (an empty cache); that a
    second search takes its stage from the cache is test_handback's rerun. Its searches'
    command line passes run.py's checks."""
    from bench import stage_runs
    from search.spec import parse_spec

    exp_dir, _ = all_strategies_search
    counted = stage_runs.count(exp_dir)
    assert counted["ran"] == {"colorization": 1, "supervised": 1} and counted["cached"] == {}
    (row,) = stage_runs.table([{"samples": 2, "cache": "empty", **counted}])
    assert row[1:] == ("colorization 1, supervised 1", "each stage 1x")
    assert row[0].startswith(f"{counted['trials']} trials (2 per strategy, ")
    (row,) = stage_runs.table([{"samples": 2, "cache": "warm", "ran": {},
                                "cached": {"supervised": 1}, "trials": 6}])
    assert row[1:] == ("none", "all from the cache")
    spec = parse_spec(stage_runs.search_args(tmp_path, "cold-1", 1, tmp_path / "cache",
                                             TINY_MODEL))
    assert ",".join(spec.strategies) == stage_runs.STRATEGIES and spec.samples == 1


def test_run_all_refuses_an_unknown_benchmark(capsys):
    from bench import run_all

    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])
    assert "unknown benchmarks ['nope']" in capsys.readouterr().err


@pytest.mark.slow  # bench/search_quality.py --quick: three small searches through search/run.py
def test_search_quality_quick_counts_are_consistent():
    from bench import search_quality

    m = search_quality.measure(**search_quality.QUICK)
    s = m["settings"]
    (r,) = m["runs"]
    full = s["samples"] * s["max_epochs"]
    assert r["trials"] == s["samples"] and r["errored"] == 0
    # FIFO stops nothing: random search and TPE spend the same budget, every trial to the end
    assert r["epochs"]["fifo"] == r["epochs"]["tpe"] == r["budget"] == full
    # ASHA ran the same configs, each at least to its first rung and none past the budget
    assert s["samples"] * s["grace_period"] <= r["epochs"]["asha"] <= full
    # one seed for every trial: ASHA's epochs are FIFO's, so it cannot find a better epoch
    assert r["same_training"] == s["samples"]
    assert r["best"]["asha"] <= r["best"]["fifo"]
    for searcher, best in (("random", r["best"]["fifo"]), ("tpe", r["best"]["tpe"])):
        curve = r["quarters"][searcher]
        assert curve == sorted(curve), "the best so far never drops"
        assert curve[-1] == best, "after the whole budget: the search's best epoch"

    rows = search_quality.table(m)
    by_name = {name: (value, ratio) for name, value, ratio in rows}
    assert len(by_name) == len(rows) == 13  # 4 for the seed, 4 over seeds, 5 totals
    seed, over = "imagefolder seed 0: ", "imagefolder, 1 seed: "
    value, ratio = by_name[seed + "trial-epochs ASHA / FIFO"]
    assert value == f"{r['epochs']['asha']} / {r['epochs']['fifo']}"
    ratio_value = r["epochs"]["asha"] / r["epochs"]["fifo"]
    assert ratio.startswith(f"{ratio_value:.2f}  {'met' if ratio_value <= 0.35 else 'MISSED'}")
    assert by_name[seed + "best val_acc ASHA / FIFO"][0] == (f"{r['best']['asha']:.3f} / "
                                                            f"{r['best']['fifo']:.3f}")
    budget = f"after 25/50/75/100% of {full} trial-epochs"
    for searcher in ("TPE", "random"):
        quarters = by_name[f"{seed}best val_acc {searcher} {budget}"][0]
        assert quarters == " ".join(f"{v:.3f}" for v in r["quarters"][searcher.lower()])
        assert by_name[f"{over}best val_acc {searcher} after 25/50/75/100%"][0] == quarters
    assert by_name[over + "trial-epochs ASHA / FIFO"][0] == f"{ratio_value:.2f}"
    assert over + "best val_acc ASHA - FIFO, pts" in by_name
    goals = [row for row in rows if row[0].startswith("goal: ")]
    assert [g[2] for g in goals] == [
        "met" if ratio_value <= 0.35 else "MISSED",
        "met" if r["best"]["fifo"] - r["best"]["asha"] <= 0.01 else "MISSED"]
    assert rows[-1] == ("trials errored, all searches", "0", "")
    text = search_quality.format_table(rows)
    assert text.splitlines()[0].split() == ["measure", "value", "ratio"]


def test_pretext_throughput_table():
    from bench import pretext_throughput

    m = pretext_throughput.measure(TINY_MODEL, image_size=32, images=64, batch_size=16,
                                   epochs=1)
    assert (m["images"], m["device"]) == (64, pick_device().type)  # wherever it runs
    (sup_name, sup, _), (col_name, col, ratio) = pretext_throughput.table(m)
    assert sup_name.startswith("supervised stage (test_resnet, 64 images at 32 px, batch 16")
    assert col_name.startswith("colorization stage (")
    assert ratio == f"{m['colorization'] / m['supervised']:.2f}x supervised"
    assert sup == f"{m['supervised']:.0f} img/s" and col == f"{m['colorization']:.0f} img/s"


@pytest.mark.slow  # a search with its final evaluation, the report, then the table's search
def test_the_gpu_check_runs_every_part_small_on_a_cpu(tmp_path):
    """bench/gpu.py --check --device cpu: tests, a search with its final evaluation, predict,
    the report and the throughput table at tiny sizes, each PASS (no GPU numbers: a check
    that the check works)."""
    from bench import gpu_check

    assert gpu_check.main("cpu", str(tmp_path)) == 0
    summary = (tmp_path / "summary.txt").read_text()
    for part in ("tests", "search", "predict", "report", "table"):
        assert f"PASS  {part}" in summary, summary
    assert "4 of 4 images classified" in summary
    for row in ("bare loop alone (test_resnet at 32 px, batch 32)",
                "2 packed trials of a quarter GPU at 32 px, total",
                "search (demo:8 at 32 px, 2 trials x up to 2 epochs", "  trials  ",
                "images trained per second in the trial phase, all trials"):
        assert row in summary, row


def test_the_gpu_table_splits_the_search_and_judges_it_against_the_bare_loop(monkeypatch):
    import pandas as pd

    from bench import gpu

    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
    m = {"cfg": gpu.GPU, "bare": 30_000.0,
         "eager": {"images_per_s": 12_000.0, "device": "cuda"},
         "compiled": {"images_per_s": 15_000.0, "compile_s": 20.0},
         "packed": [{"trials": 1, "images_per_s": 20_000.0},
                    {"trials": 4, "images_per_s": 50_000.0}],
         "search": {"wall_s": 38.0, "images": 450_000, "trial_epochs": 50, "batches": [256],
                    "seconds": {"data": 1.0, "ray start": 4.0, "stages": 0.5, "trials": 20.0,
                                "finish": 2.5},
                    "samples": [(80.0, 9000.0), (90.0, 12000.0)],
                    "epochs": pd.DataFrame({"images": [9000, 9000], "train_s": [10.0, 15.0],
                                            "iteration_s": [14.0, 21.0]})}}
    rows = {name.strip(): (value, note) for name, value, note in gpu.table(m)}
    wall = next(v for k, v in rows.items() if k.startswith("search (demo:900 at 128 px"))
    assert wall == ("38.0 s", "goal met: <= 40 s")
    # 38 s of wall time, 28 s in the phases
    assert rows["start and exit: interpreter, imports, checks, Ray's shutdown"][0] == "10.0 s"
    assert rows["images trained per second in the trial phase, all trials"] == (
        "22,500 img/s", "0.75x the bare loop, goal met: >= 0.70x")
    assert rows["4 packed trials of a quarter GPU at 32 px, total"][1] == "2.50x one trial"
    assert rows["GPU utilisation in the trial phase, mean / median"][0] == "85% / 85%"
    # 4 slots of the 20 s trial phase: 25 s of training epochs, 10 s else in trials, 45 s none
    assert rows["a trial's training rate inside its epochs, median (4 at once)"][0] == \
        "750 img/s"
    assert rows["of the 4 slots' time in the trial phase: training epochs"] == (
        "31%", "25.0 s of 80.0 s")
    assert rows["trials' other time: setup, evaluation, waiting on reports"][0] == "12%"
    assert rows["no trial running: actor starts, Tune between trials"][0] == "56%"
    m["search"]["seconds"]["trials"] = 40.0
    rows = {name.strip(): note for name, _, note in gpu.table(m)}
    assert rows["images trained per second in the trial phase, all trials"].endswith(
        "goal NOT met: >= 0.70x")


def test_run_all_says_the_gpu_benchmark_was_not_measured_without_a_gpu(tmp_path, monkeypatch):
    from bench import run_all

    monkeypatch.setattr(run_all, "has_gpu", lambda: False)
    out = tmp_path / "README.md"
    assert run_all.main(["--only", "gpu", "--out", str(out)]) == 0
    (section,) = out.read_text().split("\n## ")[1:]
    assert section.startswith("gpu\n") and "Not measured yet: the machine that wrote this " \
        "file had no GPU." in section


def test_run_all_keeps_the_tables_written_before_a_benchmark_that_fails(tmp_path,
                                                                        monkeypatch):
    from bench import run_all

    def run_one(name: str, quick: bool) -> tuple[str, str, float]:
        if name == "frozen_fast_path":
            raise RuntimeError("python bench/frozen_fast_path.py failed")
        return f"python bench/{name}.py", "measure  value", 1.0

    monkeypatch.setattr(run_all, "run_one", run_one)
    out = tmp_path / "README.md"
    with pytest.raises(RuntimeError, match="frozen_fast_path.py failed"):
        run_all.main(["--only", "data_pipeline,frozen_fast_path", "--out", str(out)])
    (section,) = out.read_text().split("\n## ")[1:]
    assert section.startswith("data_pipeline\n") and "    measure  value" in section


@pytest.mark.slow  # bench/big_data.py on 1,000 and 4,000 JPEGs, then a 2-trial Tuner on Ray
def test_big_data_table_and_bounded_memory():
    from bench import big_data

    m = big_data.measure(counts=(1000, 4000), image_sizes=(128,), jpeg_size=64, repeats=1)
    small, big = m["runs"][(128, 1000)], m["runs"][(128, 4000)]
    assert (small["images"], big["images"]) == (1000, 4000)
    # the decoded images (197 MB at 4,000) never come into memory, only a few chunks of them:
    # neither the preparing process nor its workers grow with the count
    assert big["added"] < big["array_bytes"] / 2
    assert big["added"] - small["added"] < (big["array_bytes"] - small["array_bytes"]) / 4
    # the workers' memory is sampled every 20 ms, and a loaded machine once starved the sampler
    # for all of the small run's decoding (it read 0): the growth is only known when it saw both
    assert big["workers"] < big["array_bytes"] / 2
    if small["workers"]:
        assert big["workers"] - small["workers"] < (big["array_bytes"] - small["array_bytes"]) / 4
    assert 1.9 < big["cache_bytes"] / big["array_bytes"] < 2.2  # decoded once, split once
    assert m["warm"]["seconds"] < big["seconds"] and m["warm"]["added"] < big["array_bytes"] / 4
    store = m["store"]
    assert store["after_put"][1] == 1, "the dataset is one object"
    assert abs(store["after_put"][0] * big_data.MB - store["arrays"]) < 2 * big_data.MB
    assert store["after_trials"][0] == store["after_put"][0], "trials added no copy"
    assert store["driver_load"] < store["arrays"] / 4 and store["driver_put"] < store["arrays"] / 4
    for trial in store["trials"]:
        assert not trial["writeable"] and trial["anon_added"] < store["arrays"] / 4

    rows = big_data.table(m)
    assert rows[0][1] == "4,000"
    names = [r[0] for r in rows[1:7]]
    assert names == [f"{n} images at 128 px: {what}" for what in (
        "preparation, empty cache", "peak RSS, preparing process", "cache on disk")
        for n in ("1,000", "4,000")]
    assert "1.00x the smallest's" in rows[1][2] and rows[1][2].endswith("CPU " + rows[1][2]
                                                                        .split("CPU ")[1])
    assert rows[-3][2].startswith("1 object(s)") and rows[-1][2].startswith("read-only")
    text = big_data.format_table(rows)
    assert text.splitlines()[0].split() == ["measure", "value", "ratio"]


def test_run_all_keeps_a_gpu_table_where_no_gpu_can_measure_it_again(tmp_path, monkeypatch):
    from bench import run_all

    monkeypatch.setattr(run_all, "has_gpu", lambda: False)
    monkeypatch.setattr(run_all, "run_one", lambda name, quick: ("cmd", "measure  value", 1.0))
    out = tmp_path / "README.md"
    out.write_text(run_all.readme({"gpu": "## gpu\n\nmeasured on an H200\n"}))
    assert run_all.main(["--only", "gpu,frozen_fast_path", "--out", str(out)]) == 0
    assert run_all.main(["--out", str(out)]) == 0  # every benchmark, the GPU's skipped
    assert "## gpu\n\nmeasured on an H200\n" in out.read_text()


def test_serve_load_table_judges_batching_at_16_clients():
    from bench.serve_load import table

    cell = {"p50": 10.0, "p95": 20.0, "p99": 30.0, "failed": 0}
    results = {("on", 1): {**cell, "rps": 40.0}, ("on", 16): {**cell, "rps": 130.0},
               ("off", 1): {**cell, "rps": 50.0}, ("off", 16): {**cell, "rps": 60.0, "failed": 2}}
    lines = table(results, 100, "cpu").splitlines()
    assert lines[-1].endswith("2.17x (goal >= 2x: met)") and "at 16 client" in lines[-1]
    assert lines[-2].endswith("0.80x")  # at 1 client: no verdict
    assert any("failed requests" in line and "2 of 100" in line for line in lines)
    results[("on", 16)]["rps"] = 100.0
    assert table(results, 100, "cpu").splitlines()[-1].endswith("1.67x (goal >= 2x: MISSED)")


def test_colorization_table_says_what_was_not_measured():
    from bench.colorization import CONFIGS, table

    measured = {"acc": [0.5, 0.6], "probe": [0.3, 0.4], "ab": [12.0, 14.0], "kept": ["3/6", "4/7"]}
    rows = {"sizes": (300, None), "scratch": {"acc": [0.4, 0.5]}}
    for label, *_, bigger in CONFIGS:
        rows[label] = {"acc": [], "probe": [], "ab": [], "kept": []} if bigger else measured
    text = table({"CIFAR-10 slice": rows})
    assert "no larger pretext set offline" in text
    assert text.count("not measured") == 2 and "(+10.0 pts vs scratch)" in text
    assert "13.00  3/6 4/7" in text


def test_pretext_data_is_prepared_once_and_handed_to_the_stage_mapped(tmp_path):
    """bench/pretext_data.py's preparation of a flat folder, in a fresh process: the last 5%
    held out, both splits views of the mapped cache, the warm cache faster than decoding."""
    from bench import pretext_data
    from bench.big_data import generate, in_fresh_process

    generate(tmp_path / "classes", 400, 32)
    assert pretext_data.flat_folder(tmp_path / "classes", tmp_path / "flat") == 400
    call = f"prepare_pretext_here({str(tmp_path / 'flat')!r}, {str(tmp_path / 'cache')!r}, 32)"
    cold, warm = (in_fresh_process(call, "bench.pretext_data") for _ in range(2))
    assert (cold["train"], cold["held_out"]) == (warm["train"], warm["held_out"]) == (380, 20)
    assert cold["mapped"] and warm["mapped"]
    assert warm["seconds"] < cold["seconds"]


def test_the_recipe_benchmark_runs_each_arm_with_its_own_flags(tmp_path, monkeypatch):
    """bench/recipe.py's three searches per seed, as the commands it hands search/run.py (the
    searches faked: a real run takes minutes), and the (a) arm's space file still valid."""
    import subprocess

    from bench import recipe
    from spaces.overrides import load_space_file
    from store.layout import EVAL_RESULTS

    commands = []

    def fake_search(command, **kwargs):
        commands.append(command)
        exp_dir = Path(*(command[command.index(flag) + 1] for flag in ("--storage", "--name")))
        (exp_dir / EVAL_RESULTS).parent.mkdir(parents=True)
        (exp_dir / EVAL_RESULTS).write_text(f"strategy,seed,test_acc\nscratch,0,{len(commands)}\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr("bench.search_quality.subprocess.run", fake_search)
    m = recipe.measure(tmp_path, cifar=tmp_path / "missing", seeds=(0,), jobs=1)
    assert m["results"] == {"demo": {"before": [1.0], "preset": [2.0], "search": [3.0]}}
    assert (tmp_path / "runs" / "demo-search-0" / EVAL_RESULTS).is_file()  # --workdir kept
    before, preset, search = (" ".join(c) for c in commands)
    for command in (before, preset, search):
        assert "--strategy scratch --data demo --backbone resnet10t --samples 8" in command
        assert "--max-epochs 3 --grace-period 1 --reduction-factor 4 --seed 0" in command
        assert command.endswith("--final-eval 1") and "--max-concurrent" not in command
    assert before.count("--no-preset --space ") == 1 and "--samples 1" in preset
    assert "--no-preset" not in search + preset and "--samples 1" not in search
    space = load_space_file(recipe.ARMS["before"][2], ["scratch"])["scratch"]
    assert "mix" in space and space["mix"].contains("none") and not space["mix"].contains("mixup")
