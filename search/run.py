"""Search transfer strategies with Ray Tune and Optuna, then print and write the leaderboard.

    python search/run.py --strategy unfrozen

Checks the input and loads the data before anything starts (bad input: one message, exit code
2, nothing written), runs each pretraining stage once, searches each strategy with its own Tuner,
and writes leaderboard.csv and best/<strategy>.yaml into the experiment directory.
"""

from __future__ import annotations

import logging
import os
import sys

from search.spec import UsageError, parse_spec
from trainables.data.dataset import DataError


def main(argv: list[str] | None = None, prog: str = "run.py") -> int:
    # The CLI and its errors import only light modules; torch, Ray and the loaders load below,
    # once the input has passed every check that needs none of them.
    try:
        spec = parse_spec(argv, prog)
        from search.pretraining import check_stage_data
        from trainables.data.load import load_dataset, load_pretrain_data

        data = load_dataset(spec.data, image_size=spec.image_size, seed=spec.seed,
                            split=spec.split, cache_dir=spec.cache_dir)
        pretrain = None
        if spec.pretrain_data:
            pretrain = load_pretrain_data(spec.pretrain_data, spec.image_size, spec.seed,
                                          spec.cache_dir)
        check_stage_data(spec, data, pretrain)
        if spec.final_eval and (data.test is None or len(data.test) == 0):
            raise DataError(f"--final-eval {spec.final_eval}: {spec.data} has no test split "
                            "(give --split a test fraction, or a test/ folder)")
    except (UsageError, DataError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"data: {data.name}, {data.num_classes} classes, {len(data.train)} train / "
          f"{len(data.val)} val images at {data.image_size} px", flush=True)

    import ray

    from search.tuning import run_search
    from trainables.pretrain import StageError

    # A checkpoint every epoch triggers Tune's experiment snapshots often; on small demo runs
    # that is cheap and the warning it prints every few seconds is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    context = ray.init(address=spec.address, logging_level=logging.WARNING)
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url} "
              "(token: `ray get-auth-token`)", flush=True)
    try:
        outcomes = run_search(spec, data, pretrain)
    except StageError as error:  # raised in a Ray task: the cause carries the plain message
        print(f"{prog}: error: {getattr(error, 'cause', error)}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    prune(spec)
    failed = [s for s, trials in outcomes.items() if all(t["errored"] for t in trials)]
    if spec.final_eval and len(failed) < len(spec.strategies):
        from search.evaluate import evaluate_experiment

        evaluate_experiment(spec.exp_dir, seeds=spec.final_eval, cache_dir=str(spec.cache_dir),
                            address=spec.address)
    show_leaderboard(spec.exp_dir)
    if failed:
        print(f"{prog}: error: no successful trial for {', '.join(failed)}; see the errors "
              "above and each trial's error.txt", file=sys.stderr)
        return 1
    return 0


def prune(spec) -> None:
    """Keep the best-epoch checkpoint of each strategy's top trials; print the disk use."""
    from analysis import load_results
    from search.outcomes import disk_use, prune_checkpoints

    before = disk_use(spec.exp_dir)
    kept = prune_checkpoints(load_results(spec.exp_dir), spec.keep_checkpoints)
    print(f"\ncheckpoints: kept {len(kept)}, the best epoch of each strategy's top "
          f"{spec.keep_checkpoints or 'all'} trials; experiment on disk "
          f"{before / 1e9:.2f} GB -> {disk_use(spec.exp_dir) / 1e9:.2f} GB", flush=True)


def show_leaderboard(exp_dir) -> None:
    """Write leaderboard.csv/.md and best/<strategy>.yaml, and print the leaderboard."""
    import pandas as pd

    from analysis.results import refresh_leaderboard

    board = refresh_leaderboard(exp_dir)
    with pd.option_context("display.max_colwidth", 200, "display.width", 200):
        print("\nleaderboard (val_acc of each strategy's best epoch of its best trial):")
        print(board.drop(columns=["trial_id"]).to_string(index=False))
    print(f"\nexperiment: {exp_dir}")
    print(f"  tensorboard --logdir {exp_dir}")
    print(f"  python analysis/report.py {exp_dir}")


def console() -> int:
    """The `transfer-search` command."""
    return main(prog="transfer-search")


if __name__ == "__main__":
    sys.exit(main())
