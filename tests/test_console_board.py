"""The leaderboard printed at the end of a run fits a 120-column terminal (analysis/console.py),
and a local Ray start does not print Ray's token-auth notice (search/resources.py).

The experiment is hand-built in Ray Tune's file layout with the store's writers, and the
leaderboard comes from analysis.results as a run makes it: no Ray, no training.
"""

import logging

import pandas as pd
import pytest

from analysis.console import format_value, hyperparameter_lines, leaderboard_text, pareto_text
from analysis.results import pareto_trials, refresh_leaderboard
from search.resources import TOKEN_NOTICE_LOGGER, TokenNoticeFilter, token_notice_dropped
from search.run import show_leaderboard
from store.layout import EVAL_RESULTS, write_experiment, write_trials
from tests.helpers import write_trial

WIDTH = 120
STRATEGIES = ("scratch", "frozen", "unfrozen", "colorization", "partial", "lp_ft")
# the longest config the built-in spaces sample: every optional dimension, full precision
LONGEST = {"augment": "randaugment", "batch_size": 128, "freeze_depth": 3,
           "label_smoothing": 0.18874961570292484, "lr": 0.000312345678, "lr_mult": 0.70989362574,
           "magnitude": 17, "optimizer": "adamw", "weight_decay": 0.000130490735503624}


@pytest.fixture
def experiment(tmp_path):
    """Six strategies of three trials, 4 epochs each at most; lp_ft's every trial errored."""
    exp_dir = tmp_path / "board"
    exp_dir.mkdir()
    write_experiment(exp_dir, {
        "backbone": "resnet18", "data": "demo", "max_epochs": 4, "seed": 0, "image_size": 32,
        "split": [0.7, 0.15, 0.15], "pretrain_epochs": 10, "weights": None,
        "objective": "acc+time",
        "strategies": {s: {"pretrained": "none" if s == "scratch" else "supervised"}
                       for s in STRATEGIES}})
    for n, strategy in enumerate(STRATEGIES):
        outcomes = []
        for t in range(3):
            trial_id = f"{strategy[:4]}{t:04d}"
            errored = strategy == "lp_ft"
            # trial 1 runs its 4 epochs and is the best; ASHA stopped the others early
            accs = [] if errored else [0.1 + 0.05 * n + 0.1 * (t % 2) * e
                                       for e in range((1, 4, 2)[t])]
            write_trial(exp_dir, strategy, trial_id, {**LONGEST, "lr": LONGEST["lr"] * (t + 1)},
                        accs, seconds_per_epoch=4.0 + t)
            outcomes.append({"trial_id": trial_id, "errored": errored,
                             "error": "RuntimeError: x" if errored else None})
        write_trials(exp_dir, strategy, outcomes)
    return exp_dir


def evaluated(exp_dir, seeds=3):
    (exp_dir / EVAL_RESULTS).parent.mkdir(exist_ok=True)
    rows = [f"{s},{seed},{0.5 + 0.01 * seed + 0.02 * i}" for i, s in enumerate(STRATEGIES[:4])
            for seed in range(seeds)]
    (exp_dir / EVAL_RESULTS).write_text("strategy,seed,test_acc\n" + "\n".join(rows) + "\n")
    return exp_dir


def assert_fits(text: str) -> None:
    too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_wide, too_wide


def test_the_printed_leaderboard_fits_120_columns_and_names_every_strategy(experiment, capsys):
    show_leaderboard(experiment, str(experiment))
    out = capsys.readouterr().out
    assert_fits(out)
    for strategy in STRATEGIES:
        assert any(line.startswith(strategy) for line in out.splitlines()), strategy
    header = next(line for line in out.splitlines() if line.split()[:2] == ["strategy", "val_acc"])
    for column in ("top-3 mean ± std", "trials", "errored", "stopped early"):
        assert column in header
    assert "Pareto front" in out
    assert '{"' not in out and "0.00031234" not in out  # no raw JSON at full precision


def test_hyperparameters_are_shown_to_3_significant_digits(experiment):
    text = leaderboard_text(refresh_leaderboard(experiment))
    assert "lr=0.000625" in text  # the best trial's: 2 * 0.000312345678
    assert "weight_decay=0.00013" in text and "0.0001304" not in text
    assert "label_smoothing=0.189" in text and "lr_mult=0.71" in text
    assert "augment=randaugment" in text and "batch_size=128" in text
    assert format_value(0.000312345678) == "0.000312" and format_value(64) == "64"
    assert format_value(True) == "True" and format_value("light") == "light"


def test_a_long_config_wraps_under_its_strategy_within_the_width(experiment):
    board = refresh_leaderboard(experiment)
    lines = hyperparameter_lines(board, width=60)
    assert max(map(len, lines)) <= 60 and len(lines) > len(STRATEGIES)
    starts = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert sorted(starts) == sorted(s for s in STRATEGIES if s != "lp_ft")  # lp_ft: no config
    joined = " ".join(line.split(": ", 1)[-1].strip() for line in lines)
    assert all(f"{key}=" in joined for key in LONGEST)


def test_the_test_column_appears_only_once_the_final_evaluation_has_run(experiment):
    before = leaderboard_text(refresh_leaderboard(experiment))
    assert "test mean" not in before
    after = leaderboard_text(refresh_leaderboard(evaluated(experiment)))
    assert_fits(after)
    header = next(line for line in after.splitlines() if line.startswith("strategy"))
    assert "test mean ± 95% CI" in header and "seeds" in header
    scratch = next(line for line in after.splitlines() if line.startswith("scratch "))
    # 0.51 ± t(0.975, 2) * 0.01 / sqrt(3): the interval of analysis.stats, half its width
    assert "0.510 ± 0.025" in scratch and scratch.rstrip().endswith("3")
    partial = next(line for line in after.splitlines() if line.startswith("partial "))
    assert partial.split()[-2:] == ["-", "-"]  # not evaluated


def test_one_seed_shows_the_mean_without_an_interval(experiment):
    text = leaderboard_text(refresh_leaderboard(evaluated(experiment, seeds=1)))
    scratch = next(line for line in text.splitlines() if line.startswith("scratch "))
    assert scratch.split()[-2:] == ["0.500", "1"]


def test_the_pareto_front_is_compact(experiment):
    from analysis.results import load_results

    text = pareto_text(pareto_trials(load_results(experiment)))
    assert_fits(text)
    assert "hyperparameters" not in text and "randaugment" not in text
    assert text.splitlines()[1].split() == ["strategy", "trial", "val_acc", "time", "(s)",
                                            "best", "epoch", "epochs"]


def test_an_empty_board_says_so():
    assert "no trial" in leaderboard_text(pd.DataFrame(columns=["strategy", "val_acc"]))


def record(message: str, name: str = TOKEN_NOTICE_LOGGER) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)


NOTICE = ("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to "
          "opt out. For more information, see "
          "https://docs.ray.io/en/latest/ray-security/token-auth.html")


def test_the_filter_drops_rays_token_notice_and_passes_other_warnings():
    notice = TokenNoticeFilter()
    assert not notice.filter(record(NOTICE))
    assert notice.filter(record("Token authentication is disabled for this Ray cluster. Anyone "
                                "with network access to the cluster can run arbitrary code"))
    assert notice.filter(record("Failed to connect to GCS", name="ray._private.worker"))


def test_only_a_local_start_drops_the_notice():
    logger = logging.getLogger(TOKEN_NOTICE_LOGGER)
    records = []  # on the logger itself: Ray's loggers do not propagate to the root's caplog
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with token_notice_dropped(local=True):
            logger.warning(NOTICE)
            logger.warning("another Ray warning")
        with token_notice_dropped(local=False):
            logger.warning(NOTICE)
        logger.warning(NOTICE)  # the filter is gone once Ray has started
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage()[:19] for r in records] == [
        "another Ray warning", NOTICE[:19], NOTICE[:19]]
    assert not logger.filters
