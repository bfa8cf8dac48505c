"""Hyperparameter importance per strategy, from the experiment's Optuna studies (optuna.db).

    python -c "from analysis.importance import importances; print(importances('experiments/NAME'))"

Reads only: each study is loaded from the experiment's storage and its usable trials are copied
into an in-memory study, which is the one the evaluator sees. The result is a tidy DataFrame
(strategy, parameter, importance, trials), importances summing to 1 per strategy.

The evaluator is PED-ANOVA (`PedAnovaImportanceEvaluator`), not fANOVA, because our spaces are
conditional: the lr is `lr_sgd` under SGD and `lr_adamw` under AdamW, `magnitude` exists only
with RandAugment and the `head_*` parameters only with an MLP head. fANOVA (like mean decrease in
impurity) scores only parameters present in every trial, so it would silently drop the lr, the
parameter that matters most; PED-ANOVA in Optuna 5 scores each parameter per regime
(conditional PED-ANOVA). It is also closed-form (Parzen estimators, no random forest to seed)
and takes milliseconds on the 8 to 50 trials of a study. A two-objective study
(`--objective acc+time`) is ranked on val_acc.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from store.layout import read_experiment

with warnings.catch_warnings():
    # optuna imports tqdm.auto, which warns in a notebook kernel without ipywidgets; nothing
    # here draws a progress bar
    warnings.filterwarnings("ignore", message="IProgress not found")
    import optuna
    from optuna.trial import TrialState

COLUMNS = ["strategy", "parameter", "importance", "trials"]
STUDY_FILE = "optuna.db"
# "which parameters does a trial need right to land in the top quarter": with 8 trials that is
# 2 trials, with 50 it is 13. PED-ANOVA's default top 10% would be a single trial of a small
# study, and its estimate of the good region's density one point.
TARGET_QUANTILE = 0.25


def storage_url(exp_dir: Path, meta: dict) -> str | None:
    """The studies' storage; a sqlite file that moved with a copied experiment is found in it.

    None when there is no study file at all: opening a missing sqlite path would create one.
    """
    url = meta.get("optuna_storage")
    prefix = "sqlite:///"
    if url and url.startswith("journal:"):
        return url if Path(url.removeprefix("journal:")).is_file() else None
    if url and not url.startswith(prefix):
        return url  # a database server: nothing on disk to check
    recorded = Path(url.removeprefix(prefix)) if url else None
    for path in (recorded, exp_dir / STUDY_FILE):
        if path is not None and path.is_file():
            return prefix + str(path)
    return None


def usable_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials with a finite value that did not error.

    Trials ASHA stopped early stay in: they are COMPLETE with the best val_acc they reached,
    and were stopped for being worse than their rung, which is what the importance is about.
    An errored trial is already FAIL in the study; the attribute check guards studies written
    by versions that recorded it otherwise.
    """
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and math.isfinite(t.values[0])
            and not t.user_attrs.get("errored", False)]


def study_importance(study: optuna.Study) -> dict[str, float]:
    """Parameter -> importance (sums to 1), or {} where there is nothing to rank."""
    trials = usable_trials(study)
    params = {name for t in trials for name in t.params}
    if len(trials) < 2 or len(params) < 2:  # one parameter would get 1.0 whatever the data
        return {}
    # in memory, the original untouched; val_acc alone (the first objective) when there are two
    copy = optuna.create_study(direction=study.directions[0])
    copy.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                               value=t.values[0]) for t in trials])
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=TARGET_QUANTILE)
    with warnings.catch_warnings():
        # Small studies make PED-ANOVA warn about regimes with one trial (say, the one AdamW
        # trial's lr), which it leaves out of the score, the right call here; and `normalize`
        # is flagged experimental.
        warnings.simplefilter("ignore")
        raw = optuna.importance.get_param_importances(copy, evaluator=evaluator,
                                                      normalize=False)
    total = sum(raw.values())
    # All zero when ties put every trial in the top quarter (say, every trial at chance
    # accuracy): normalising would report equal shares, which reads as a finding. It is none.
    return {k: v / total for k, v in raw.items()} if total > 0 else {}


def load_study(url: str, name: str) -> optuna.Study | None:
    """The named study, without creating tables or studies; None if it is not there."""
    if url.startswith("journal:"):  # Optuna's JournalStorage on a file (--optuna-storage)
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
        storage = optuna.storages.JournalStorage(backend)
    else:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no study of that name
        return None


def importances(exp_dir: str | Path) -> pd.DataFrame:
    """One row per (strategy, parameter) of every strategy whose study can be ranked.

    Strategies without a study (a `--config` rerun), with fewer than 2 usable trials or with a
    single parameter have no rows. Most important first within a strategy.
    """
    return importance_report(exp_dir)[0]


def importance_report(exp_dir: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """importances(), and for each strategy without rows the reason, for the report."""
    exp_dir = Path(exp_dir)
    meta = read_experiment(exp_dir)
    url = storage_url(exp_dir, meta)
    rows, reasons = [], {}
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for strategy, info in meta["strategies"].items():
            found, reason = strategy_rows(url, strategy, info.get("study_name"))
            rows += found
            if reason:
                reasons[strategy] = reason
    finally:
        optuna.logging.set_verbosity(previous)
    return pd.DataFrame(rows, columns=COLUMNS), reasons


def strategy_rows(url: str | None, strategy: str, name: str | None
                  ) -> tuple[list[dict], str | None]:
    if not name:
        return [], "no study (a --config rerun of fixed hyperparameters)"
    if url is None:
        return [], f"no {STUDY_FILE} in the experiment"
    study = load_study(url, name)
    if study is None:
        return [], f"study {name!r} not in the storage"
    trials = usable_trials(study)
    ranked = study_importance(study)
    if not ranked:
        params = {p for t in trials for p in t.params}
        if len(trials) < 2:
            return [], f"{len(trials)} complete trial(s); 2 or more are needed"
        if len(params) < 2:
            return [], f"only one parameter searched ({', '.join(params)})"
        return [], ("no top quarter to explain: so many trials tie on val_acc (e.g. all at "
                    "chance) that the top quarter is every trial")
    return [{"strategy": strategy, "parameter": p, "importance": v, "trials": len(trials)}
            for p, v in ranked.items()], None
