"""`--warm-start FILE`: configs from an earlier search, tried first by the new one.

FILE is a `best/<strategy>.yaml` (one config, of the strategy it names) or a `leaderboard.csv`
(every row of the run's strategies; any CSV with `strategy` and `hyperparameters` columns, such
as pareto.csv, works too). Each config is checked with TrialConfig now, so a bad file costs one
line and exit code 2, before anything starts.

Enqueueing into Optuna 5 (`Study.enqueue_trial`, which Ray's OptunaSearch calls for each of
`points_to_evaluate`): a trial takes an enqueued value when the space asks for that name, so

- a name the space never asks for is ignored (harmless, but the trial is not that config);
- a number outside the space's range is used anyway, with a warning, and the study then holds
  a value outside the space the sampler models;
- a categorical value outside the space's choices raises ValueError inside the searcher.

So `study_points`, given the space, keeps only what the space asks for on the config's branch
and what lies inside it; the sampler chooses the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.options import UsageError
from spaces import to_study_params, to_trial_values
from spaces.dims import Choices, Dim, Fixed, ProbeTrial
from trainables.config import TrialConfig

log = logging.getLogger(__name__)
FIX = "pass a best/<strategy>.yaml or a leaderboard.csv written by an earlier search"


def load_warm_start(path: str, strategies: Sequence[str]) -> dict[str, list[dict]]:
    """The configs to try first, per strategy of the run (an empty list for one the file does
    not cover), as TrialConfig values; raises UsageError naming the file and the fix."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"--warm-start {path}: no such file; {FIX}")
    if file.suffix.lower() in (".yaml", ".yml"):
        found = from_best_config(path, file, strategies)
    elif file.suffix.lower() == ".csv":
        found = from_leaderboard(path, file, strategies)
    else:
        raise UsageError(f"--warm-start {path}: neither .yaml nor .csv; {FIX}")
    return {s: found.get(s, []) for s in strategies}


def from_best_config(path: str, file: Path, strategies: Sequence[str]) -> dict[str, list[dict]]:
    # here, not at the top: the analysis package loads pandas and scipy, seconds the searcher
    # (which imports this module for study_points) does not need
    from store.best_config import ConfigError, read_best_config

    try:
        config = read_best_config(file)
    except ConfigError as error:  # its message names --config; this file came with --warm-start
        reason = str(error).removeprefix(f"--config {file}: ")
        raise UsageError(f"--warm-start {path}: {reason}") from None
    strategy = config["strategy"]
    if strategy not in strategies:
        raise UsageError(f"--warm-start {path}: a config of {strategy}, which this run does not "
                         f"search ({', '.join(strategies)}); add --strategy {strategy} or pass "
                         "that strategy's best yaml")
    return {strategy: [checked(path, strategy, config["hyperparameters"])]}


def from_leaderboard(path: str, file: Path, strategies: Sequence[str]) -> dict[str, list[dict]]:
    import pandas as pd  # only here: the CLI's checks otherwise stay light

    try:
        board = pd.read_csv(file)
    except (OSError, UnicodeDecodeError, ValueError) as error:  # pandas' parse errors included
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"--warm-start {path}: cannot read it as CSV ({reason}); {FIX}"
                         ) from None
    missing = [c for c in ("strategy", "hyperparameters") if c not in board.columns]
    if missing:
        raise UsageError(f"--warm-start {path}: no {' and no '.join(missing)} column; {FIX}")
    rows = board[board["strategy"].isin(strategies) & board["hyperparameters"].notna()
                 & (board["hyperparameters"].astype(str).str.strip() != "")]
    if rows.empty:
        have = sorted(board["strategy"].dropna().astype(str).unique())
        raise UsageError(f"--warm-start {path}: no config for {', '.join(strategies)} (it has "
                         f"{', '.join(have) or 'none'}); pick one of its strategies with "
                         "--strategy, or another file")
    found: dict[str, list[dict]] = {}
    for index, row in rows.iterrows():
        where = f"row {index + 2}"  # the header is line 1
        try:
            values = json.loads(row["hyperparameters"])
        except json.JSONDecodeError as error:
            raise UsageError(f"--warm-start {path}: {where}: hyperparameters is not JSON "
                             f"({error.msg}); export the leaderboard again") from None
        found.setdefault(row["strategy"], []).append(
            checked(f"{path}: {where}", row["strategy"], values))
    return found


def checked(where: str, strategy: str, values: Any) -> dict:
    """`values` as TrialConfig values (lr_sgd/lr_adamw read as lr), checked by TrialConfig."""
    try:
        if not isinstance(values, dict):
            raise ValueError("not a mapping of names to values")
        values = to_trial_values(values)
        TrialConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--warm-start {where}: bad hyperparameters for {strategy} ({error}); "
                         "fix or remove them") from None
    return values


def study_points(configs: list[dict], space: Callable[[Any], Any] | None = None
                 ) -> list[dict]:
    """Warm-start configs as Optuna parameters for `study.enqueue_trial` (Ray's
    `points_to_evaluate`): lr as lr_<optimizer>.

    With `space` (the `spaces.get_space` result the searcher uses), each point keeps only the
    names the space asks for on that config's branch with a value inside their range or choices,
    so an overridden space never gets a value outside it (see the module docstring); the
    sampler picks what was dropped, which is logged.
    """
    points = [to_study_params(config) for config in configs]
    return points if space is None else [fit_to_space(point, space) for point in points]


def fit_to_space(point: dict, space: Any) -> dict:
    def pick(name: str, spec: Dim) -> Any:  # follow the point's branch where it can be taken
        if name in point and spec.contains(point[name]):
            return point[name]
        return spec.choices[0] if isinstance(spec, Choices) else spec.low

    dims = space.trace(ProbeTrial(pick))
    asked = {n for n, spec in dims.specs.items() if not isinstance(spec, Fixed)}
    kept = {n: v for n, v in point.items() if n in asked and dims.specs[n].contains(v)}
    outside = [f"{n}={v!r}" for n, v in point.items() if n in asked and n not in kept]
    unasked = [f"{n}={v!r}" for n, v in point.items()  # a fixed value that agrees is no news
               if n not in asked and not (n in dims.specs and dims.specs[n].contains(v))]
    notes = [f"outside the space, so sampled: {', '.join(outside)}"] if outside else []
    notes += [f"not searched here: {', '.join(unasked)}"] if unasked else []
    if notes:
        log.warning("warm start: %s", "; ".join(notes))
    return kept
