"""Benchmark the driver's overhead: many trials of a trivial trainable through the harness's own
Tuner wiring, against the ideal wall time.

    python bench/driver_overhead.py --trials 500

`search.tuning.make_tuner` builds the Tuner exactly as a search does (OptunaSearch with TPE and
its SQLite study, ASHA, the checkpoint and failure configs, the TensorBoard and progress
callbacks); only the trainable is swapped for one that sleeps `--trial-seconds` and reports
once. The ideal is trials x trial time / concurrency (one CPU per trial); the overhead is the
measured wall time over it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time

from bench.tables import format_table


def trivial(config: dict, seconds: float) -> None:
    """A trial that does no work but wait, and reports what the scheduler and searcher read."""
    from ray import tune

    time.sleep(seconds)
    tune.report({"best_val_acc": float(config["lr"]), "val_acc": float(config["lr"]),
                 "best_epoch": 1, "epoch": 1})


def measure(trials: int = 500, trial_seconds: float = 1.0) -> dict:
    """Wall time of `trials` trivial trials through make_tuner, and the ideal."""
    import ray
    from ray import tune

    from search import tuning
    from search.pretraining import StageOutputs
    from search.resources import ray_target
    from search.spec import parse_spec
    from search.study import open_storage

    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec(["--strategy", "scratch", "--samples", str(trials), "--max-epochs",
                           "1", "--storage", tmp, "--name", "overhead", "--quiet"])
        spec.exp_dir.mkdir(parents=True)
        ray.init(**ray_target(None, "127.0.0.1"), include_dashboard=False)
        try:
            concurrency = int(ray.cluster_resources()["CPU"])
            trainable = tune.with_resources(
                tune.with_parameters(trivial, seconds=trial_seconds), {"cpu": 1})
            tuning.make_trainable = lambda *args: trainable
            tuner = tuning.make_tuner(spec, "scratch", None, StageOutputs({}, {}, {}, []),
                                      open_storage(None, spec.exp_dir))
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # Tune's per-trial lines, not ours
                grid = tuner.fit()
            wall = time.perf_counter() - start
        finally:
            ray.shutdown()
    ideal = trials * trial_seconds / concurrency
    return {"trials": len(grid), "errors": grid.num_errors, "wall": wall, "ideal": ideal,
            "concurrency": concurrency, "trial_seconds": trial_seconds}


def table(m: dict) -> list[tuple[str, str, str]]:
    return [
        (f"{m['trials']} trials of {m['trial_seconds']:g} s, {m['concurrency']} at a time: "
         "ideal", f"{m['ideal']:.1f} s", ""),
        ("the same through the harness's Tuner wiring", f"{m['wall']:.1f} s",
         f"{m['wall'] / m['ideal'] - 1:+.1%} over ideal"),
        ("trials errored", str(m["errors"]), ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(format_table(table(measure(args.trials, args.trial_seconds))))


if __name__ == "__main__":
    main()
