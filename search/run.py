"""Search transfer strategies with Ray Tune and Optuna, then print and write the leaderboard.

    python search/run.py --strategy unfrozen

Checks the input and loads the data before anything starts (bad input: one message, exit code
2, nothing written), runs each pretraining stage once, searches each strategy with its own Tuner,
and writes leaderboard.csv and best/<strategy>.yaml into the experiment directory. Ctrl-C stops
cleanly and prints the `--resume` command that continues the search.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from search.phases import RUN
from search.spec import UsageError, parse_spec
from store.atomic import DiskFullError
from trainables.data.dataset import DataError


def main(argv: list[str] | None = None, prog: str = "run.py") -> int:
    # The CLI and its errors import only light modules; torch, Ray and the loaders load below,
    # once the input has passed every check that needs none of them.
    try:
        spec = parse_spec(argv, prog)
        if spec.address and ":" in spec.address:
            # Ray dials an explicit address 20 times, ~41 s each, before it gives up: 3 bound
            # the wait on a port that is open but is no Ray head (read when ray is imported)
            os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "3")
        if spec.show_space:
            return show_space(spec)
        RUN.start("data")
        data, sources = load_inputs(spec)
    except (UsageError, DataError, DiskFullError) as error:
        return fail(prog, error)
    print(f"data: {data.name}, {data.num_classes} classes, {len(data.train)} train / "
          f"{len(data.val)} val images at {data.image_size} px", flush=True)
    try:
        searched = search_on_ray(spec, data, sources, prog)
    except KeyboardInterrupt:  # before the Tuner, which handles Ctrl-C itself
        return interrupted(spec, prog, None)
    if isinstance(searched, int):  # the run's exit code, finish included
        return searched
    return interrupted(spec, prog, searched.interrupted)


def show_space(spec) -> int:
    """--show-space: the spaces this run would search; its training split's size bounds the
    batch sizes on a GPU, so the data is loaded (and cached) as the search would."""
    from spaces.overrides import show_spaces
    from trainables.data.load import load_dataset

    data = load_dataset(spec.data, image_size=spec.image_size, seed=spec.seed, split=spec.split,
                        cache_dir=spec.cache_dir)
    print(show_spaces(spec, len(data.train)), end="")
    return 0


def load_inputs(spec):
    """The data and the stages' data, loaded and checked; the study's server reached."""
    from search.pretraining import check_stage_data, load_stage_data
    from trainables.data.load import load_dataset

    data = load_dataset(spec.data, image_size=spec.image_size, seed=spec.seed,
                        split=spec.split, cache_dir=spec.cache_dir)
    sources = load_stage_data(spec)
    check_stage_data(spec, data, sources)
    from search.preflight import check_inputs

    check_inputs(spec, data, sources)
    if spec.final_eval and (data.test is None or len(data.test) == 0):
        raise DataError(f"--final-eval {spec.final_eval}: {spec.data} has no test split "
                        "(give --split a test fraction, or a test/ folder)")
    from search.study import is_server

    if spec.optuna_storage and is_server(spec.optuna_storage):  # reached now, in seconds
        from search.study import StorageError, open_storage

        try:
            open_storage(spec.optuna_storage, spec.exp_dir)
        except StorageError as error:
            raise UsageError(str(error)) from None
    return data, sources


def search_on_ray(spec, data, sources, prog: str):
    """Ray up, resources checked, the search, then its finish; returns the run's exit code, or
    the Search when it was interrupted."""
    import ray

    from search.driver import run_search
    from search.progress import quiet_ray_output
    from search.resources import (
        ResourceError,
        check_resources,
        check_storage_reach,
        init_ray,
        node_resources,
    )
    from trainables.failures import first_line
    from trainables.pretrain import StageError

    # A checkpoint every epoch triggers Tune's experiment snapshots often; on small demo runs
    # that is cheap and the warning it prints every few seconds is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet_ray_output(spec.verbosity)  # Ray's own status tables off: the progress table replaces
    # workers' INFO lines (a "Checkpoint successfully created" per epoch) only with --verbose
    level = "INFO" if spec.verbosity == "verbose" else "WARNING"
    RUN.enter("ray start")
    try:
        context = init_ray(spec.address, spec.dashboard_host, dashboard=spec.dashboard,
                           logging_level=logging.WARNING,
                           logging_config=ray.LoggingConfig(log_level=level))
    except (ConnectionError, RuntimeError) as error:  # a refused token is a RuntimeError
        where = f"--address {spec.address}: cannot join the Ray cluster" if spec.address \
            else "cannot start or join Ray"
        return fail(prog, UsageError(f"{where} ({first_line(error)}){auth_hint(error)}"))
    try:
        check_resources(spec.cpus_per_trial, spec.gpus_per_trial, node_resources())
        if not spec.storage_uri:
            check_storage_reach(spec.storage)
        show_dashboards(spec, context.dashboard_url)
        searched = run_search(spec, data, sources)
        # the final evaluation's tasks run on this Ray, whose workers are up: starting another
        # instance for them costs a Ray start (5 to 11 s measured)
        return searched if searched.interrupted else finish(spec, searched.outcomes, prog)
    except (StageError, ResourceError, DiskFullError) as error:  # a stage's cause: the message
        return fail(prog, getattr(error, "cause", error))
    finally:
        ray.shutdown()


def auth_hint(error: BaseException) -> str:
    """Ray names a refused token only in the text of the error's cause."""
    text = f"{error} {error.__cause__}"
    if not ("AuthenticationError" in text or "InvalidAuthToken" in text):
        return "; or leave --address out to start Ray here"
    return ("; the cluster uses token auth: run with RAY_AUTH_MODE=token and the cluster's token "
            "(`ray get-auth-token` on the head) in RAY_AUTH_TOKEN or ~/.ray/auth_token")


def show_dashboards(spec, dashboard_url: str | None) -> None:
    from search.progress import dashboard_lines
    from search.study import dashboard_command

    for line in dashboard_lines(spec.exp_dir, dashboard_url,
                                dashboard_command(spec.optuna_storage, spec.exp_dir)):
        print(line, flush=True)


def finish(spec, outcomes: dict[str, list[dict]], prog: str) -> int:
    """Prune checkpoints, evaluate on test if asked, write and print the leaderboard."""
    from search.driver import publish

    if spec.storage_uri:  # Tune's trial results, read by the analysis, without checkpoints;
        from store.uri import download, join_uri  # the driver's own files are here

        for strategy in spec.strategies:
            download(join_uri(spec.exp_uri, strategy), spec.exp_dir / strategy)
    prune(spec)
    failed = [s for s, trials in outcomes.items() if all(t["errored"] for t in trials)]
    if spec.final_eval and len(failed) < len(spec.strategies):
        from search.evaluate import evaluate_experiment

        RUN.enter("final evaluation")
        evaluate_experiment(spec.exp_dir, seeds=spec.final_eval, cache_dir=str(spec.cache_dir),
                            address=spec.address)
        RUN.enter("finish")
    show_leaderboard(spec.exp_dir, spec.exp_uri)
    RUN.write(spec.exp_dir)
    print(RUN.summary())
    publish(spec)
    if failed:
        print(f"{prog}: error: no successful trial for {', '.join(failed)}; see the errors "
              "above and each trial's error.txt", file=sys.stderr)
        return 1
    return 0


def interrupted(spec, prog: str, strategy: str | None) -> int:
    """Ctrl-C: say what was kept and how to go on; exit code 130, as for SIGINT."""
    from store.layout import is_experiment

    if not is_experiment(spec.exp_dir):
        print(f"\n{prog}: interrupted before the search started; nothing was written",
              file=sys.stderr)
        return 130
    where = f" during {strategy}" if strategy else ""
    print(f"\n{prog}: search interrupted{where}; its state is saved in {spec.exp_uri}.\n"
          f"Resume it with:\n  {resume_command(spec, prog)}", file=sys.stderr)
    return 130


def resume_command(spec, prog: str) -> str:
    import shlex

    command = "transfer-search" if prog == "transfer-search" else "python search/run.py"
    parts = ["--resume", spec.name, "--storage", spec.storage_uri or str(spec.storage)]
    if spec.address:
        parts += ["--address", spec.address]
    return f"{command} {shlex.join(parts)}"


def fail(prog: str, error: BaseException) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def prune(spec) -> None:
    """Keep the best-epoch checkpoint of each strategy's top trials; print the disk use."""
    from analysis import load_results
    from search.outcomes import prune_checkpoints
    from store.uri import size

    before = size(spec.exp_uri)
    kept = prune_checkpoints(load_results(spec.exp_dir), spec.keep_checkpoints, spec.exp_dir,
                             spec.exp_uri)
    print(f"\ncheckpoints: kept {len(kept)}, the best epoch of each strategy's top "
          f"{spec.keep_checkpoints or 'all'} trials; experiment on storage "
          f"{before / 1e9:.2f} GB -> {size(spec.exp_uri) / 1e9:.2f} GB", flush=True)


def show_leaderboard(exp_dir, exp_uri: str) -> None:
    """Write leaderboard.csv/.md and best/<strategy>.yaml, and print the leaderboard."""
    import pandas as pd

    from analysis.console import leaderboard_text, pareto_text
    from analysis.results import refresh_leaderboard
    from store.layout import PARETO_FILE, read_experiment

    board = refresh_leaderboard(exp_dir)
    print("\n" + leaderboard_text(board, meta=read_experiment(exp_dir)))
    pareto = Path(exp_dir) / PARETO_FILE
    if pareto.is_file():  # written by refresh_leaderboard for --objective acc+time only
        print("\n" + pareto_text(pd.read_csv(pareto, dtype={"trial_id": str})))
    print(f"\nexperiment: {exp_uri}")
    print(f"  tensorboard --logdir {exp_dir}")
    print(f"  python analysis/report.py {exp_uri}")


SUBCOMMANDS = {"export": "search.export", "serve": "search.serve"}


def console(argv: list[str] | None = None, prog: str = "transfer-search") -> int:
    """The `transfer-search` command; `transfer-search export|serve ...` are search/export.py
    and search/serve.py."""
    import importlib

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:  # no search flag is a bare word: this shadows none
        command = importlib.import_module(SUBCOMMANDS[argv[0]])
        return command.main(argv[1:], prog=f"{prog} {argv[0]}")
    return main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
