"""Benchmark the driver's overhead: many trials of a trivial trainable through the harness's own
Tuner wiring, against the ideal wall time.

    python bench/driver_overhead.py --trials 500

`search.tuning.make_tuner` builds the Tuner exactly as a search does (OptunaSearch with TPE and
its SQLite study, ASHA, the checkpoint and failure configs, the TensorBoard and progress
callbacks, as many trials at once as the CPUs hold); only the trainable is swapped for one that
sleeps `--trial-seconds` and reports once. The ideal is trials x trial time / concurrency (one
CPU per trial); the overhead is the measured wall time of `fit()` over it.

`--baselines` first runs the same trials through plainer Tuners in the same Ray instance, each
as many at once and reusing its actors, to tell the harness's share from Tune's own: no
searcher at all, then OptunaSearch with the harness's sampler and space without storage, then
with the harness's SQLite study (search.study.open_storage).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from bench.tables import format_table

BASELINES = {
    "bare": "bare Tuner, no searcher (Tune's own bookkeeping)",
    "optuna": "OptunaSearch (TPE, the space), no storage",
    "sqlite": "OptunaSearch with the SQLite study",
}


def trivial(config: dict, seconds: float) -> None:
    """A trial that does no work but wait, and reports what the scheduler and searcher read."""
    from ray import tune

    time.sleep(seconds)
    tune.report({"best_val_acc": float(config["lr"]), "val_acc": float(config["lr"]),
                 "best_epoch": 1, "epoch": 1})


def measure(trials: int = 500, trial_seconds: float = 1.0, baselines: bool = False) -> dict:
    """Wall time of `trials` trivial trials through make_tuner (and the baselines), the ideal."""
    import ray
    from ray import tune

    from search.resources import init_ray
    from search.spec import parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec(["--strategy", "scratch", "--samples", str(trials), "--max-epochs",
                           "1", "--storage", tmp, "--name", "overhead", "--quiet"])
        spec.exp_dir.mkdir(parents=True)
        init_ray(None, "127.0.0.1", include_dashboard=False)
        try:
            concurrency = int(ray.cluster_resources()["CPU"])
            trainable = tune.with_resources(
                tune.with_parameters(trivial, seconds=trial_seconds), {"cpu": 1})
            walls = {name: timed_fit(baseline_tuner(name, spec, trainable, concurrency))[0]
                     for name in (BASELINES if baselines else ())}
            walls["harness"], grid = timed_fit(harness_tuner(spec, trainable))
        finally:
            ray.shutdown()
    ideal = trials * trial_seconds / concurrency
    return {"trials": len(grid), "errors": grid.num_errors, "wall": walls["harness"],
            "baselines": {k: v for k, v in walls.items() if k != "harness"}, "ideal": ideal,
            "concurrency": concurrency, "trial_seconds": trial_seconds}


def timed_fit(tuner) -> tuple[float, object]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Tune's per-trial lines, not ours
        grid = tuner.fit()
    return time.perf_counter() - start, grid


def harness_tuner(spec, trainable):
    from search import tuning
    from search.pretraining import StageOutputs
    from search.study import open_storage

    tuning.make_trainable = lambda *args: trainable
    return tuning.make_tuner(spec, "scratch", None, StageOutputs({}, {}, {}, []),
                             open_storage(None, spec.exp_dir))


def baseline_tuner(name: str, spec, trainable, concurrency: int):
    """A plainer Tuner over the same trials: `name` is one of BASELINES."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search.samplers import make_sampler
    from search.study import open_storage
    from search.tuning import METRIC, strategy_space
    from spaces import to_trial_values

    class Search(OptunaSearch):  # TrialConfig's names, as the harness's searcher gives them
        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            return None if params is None else to_trial_values(params)

    searcher = None
    if name != "bare":
        study_dir = Path(spec.exp_dir) / name
        study_dir.mkdir()
        storage = open_storage(None, study_dir) if name == "sqlite" else None
        searcher = Search(space=strategy_space(spec, "scratch"), metric=METRIC, mode="max",
                          sampler=make_sampler(spec.searcher, spec.samples, spec.seed),
                          storage=storage, study_name=name)
    return tune.Tuner(
        trainable, param_space=None if searcher else {"lr": tune.uniform(1e-4, 0.1)},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.samples,
                                    max_concurrent_trials=concurrency, metric=METRIC,
                                    mode="max", reuse_actors=True),
        run_config=tune.RunConfig(name=f"baseline-{name}", storage_path=str(spec.exp_dir),
                                  verbose=0))


def table(m: dict) -> list[tuple[str, str, str]]:
    def over(wall: float) -> str:
        return f"{wall / m['ideal'] - 1:+.1%} over ideal"

    rows = [
        (f"{m['trials']} trials of {m['trial_seconds']:g} s, {m['concurrency']} at a time: "
         "ideal", f"{m['ideal']:.1f} s", ""),
    ]
    rows += [(BASELINES[name], f"{wall:.1f} s", over(wall))
             for name, wall in m["baselines"].items()]
    rows += [
        ("the same through the harness's Tuner wiring", f"{m['wall']:.1f} s", over(m["wall"])),
        ("trials errored", str(m["errors"]), ""),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--baselines", action="store_true",
                        help="also time the plainer Tuners (see above), before the harness")
    args = parser.parse_args()
    print(format_table(table(measure(args.trials, args.trial_seconds, args.baselines))))


if __name__ == "__main__":
    main()
