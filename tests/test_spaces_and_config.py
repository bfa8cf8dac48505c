"""Search spaces suggest exactly the trial config's fields; the config rejects anything else."""

from dataclasses import fields

import optuna
import pytest

from spaces import SPACES, get_space, to_trial_values
from trainables.config import AUGMENTATIONS, TrialConfig
from trainables.strategies import STRATEGIES


def test_every_strategy_has_a_space_and_every_space_a_strategy():
    assert not set(STRATEGIES) - set(SPACES), "strategies without a space in spaces/"
    assert not set(SPACES) - set(STRATEGIES), "spaces without a registered strategy"


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_space_samples_build_a_valid_trial_config(strategy):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        assert get_space(strategy)(trial) == {}  # define-by-run: no constants without --space
        config = TrialConfig.from_dict(to_trial_values(trial.params))
        assert config.augment in AUGMENTATIONS
        study.tell(trial, 0.0)
    first = study.trials[0]
    names = set(to_trial_values(first.params))
    assert {"lr", "batch_size", "augment", "weight_decay"} <= names
    assert names <= {f.name for f in fields(TrialConfig)}
    assert first.distributions[f"lr_{first.params['optimizer']}"].log  # lr per optimizer
    assert study.trials[0].distributions["weight_decay"].log


def test_strategy_specific_dimensions():
    def names(strategy):
        trial = optuna.create_study().ask()
        get_space(strategy)(trial)
        return set(trial.params)

    assert "lr_mult" in names("unfrozen")
    assert "head" in names("frozen")
    assert "lr_mult" not in names("scratch") and "head" not in names("scratch")


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown trial config keys \['learning_rate'\]"):
        TrialConfig.from_dict({"learning_rate": 0.1, "batch_size": 8, "augment": "none",
                               "weight_decay": 0.0})


def test_out_of_range_values_are_rejected():
    with pytest.raises(ValueError, match="augment"):
        TrialConfig(lr=0.1, batch_size=8, augment="mixup", weight_decay=0.0)
    with pytest.raises(ValueError, match="out-of-range"):
        TrialConfig(lr=-1.0, batch_size=8, augment="none", weight_decay=0.0)
