"""Search spaces suggest exactly the trial config's fields; the config rejects anything else."""

from dataclasses import fields

import optuna
import pytest

from search.spec import parse_spec
from search.tuning import strategy_scheduler
from spaces import SPACES, SpaceContext, get_space, to_trial_values
from spaces.registry import space_lr_ranges
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
    optimizer = first.params["optimizer"]  # lr and weight decay per optimizer, log scales
    assert first.distributions[f"lr_{optimizer}"].log
    assert first.distributions[f"weight_decay_{optimizer}"].log


def test_strategy_specific_dimensions():
    def names(strategy):
        trial = optuna.create_study().ask()
        get_space(strategy)(trial)
        return set(trial.params)

    assert "lr_mult" in names("unfrozen")
    assert "head" in names("frozen")
    assert "lr_mult" not in names("scratch") and "head" not in names("scratch")


def test_scratch_searches_higher_lrs_than_fine_tuning_and_pbt_keeps_to_them(tmp_path):
    """From random weights, fine-tuning's lowest lrs barely train a network in a short budget:
    scratch's lr ranges start 10x higher, on a CPU and on a GPU, and its PBT perturbs within
    them."""
    for device in ("cpu", "cuda"):
        context = SpaceContext(device=device, image_size=128)
        scratch, unfrozen = (space_lr_ranges(s, context) for s in ("scratch", "unfrozen"))
        assert set(scratch) == set(unfrozen) == {"sgd", "adamw"}
        for optimizer, (low, high) in scratch.items():
            assert low == pytest.approx(10 * unfrozen[optimizer][0])
            assert high == unfrozen[optimizer][1]
    spec = parse_spec(["--strategy", "scratch", "--scheduler", "pbt", "--storage",
                       str(tmp_path)])
    pbt = strategy_scheduler(spec, "scratch", SpaceContext())
    assert pbt._lr_ranges == space_lr_ranges("scratch", SpaceContext())


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown trial config keys \['learning_rate'\]"):
        TrialConfig.from_dict({"learning_rate": 0.1, "batch_size": 8, "augment": "none",
                               "weight_decay": 0.0})


def test_out_of_range_values_are_rejected():
    with pytest.raises(ValueError, match="augment"):
        TrialConfig(lr=0.1, batch_size=8, augment="mixup", weight_decay=0.0)
    with pytest.raises(ValueError, match="out-of-range"):
        TrialConfig(lr=-1.0, batch_size=8, augment="none", weight_decay=0.0)


def test_a_best_config_reruns_its_batch_on_its_own_data_but_not_on_smaller(tmp_path):
    """The built-in space may sample a batch above a small training split (its smallest
    choice fits); the exported config must rerun it. Moved to smaller data, it is refused."""
    import yaml

    from search.preflight import check_batch_sizes
    from search.spec import UsageError, parse_spec
    from trainables.data.load import load_dataset

    config = tmp_path / "best.yaml"
    config.write_text(yaml.safe_dump({
        "transfer_search_config": 1, "strategy": "scratch", "data": "demo:5", "max_epochs": 1,
        "hyperparameters": {"lr": 0.1, "batch_size": 64, "augment": "none",
                            "weight_decay": 0.0}}))
    small = load_dataset("demo:5", cache_dir=tmp_path / "cache")
    assert len(small.train) < 64
    own = parse_spec(["--config", str(config), "--storage", str(tmp_path / "runs")])
    check_batch_sizes(own, small)  # no error: its search ran batch 64 on these images
    moved = parse_spec(["--config", str(config), "--data", "demo:4",
                        "--storage", str(tmp_path / "runs")])
    with pytest.raises(UsageError, match="batch size 64 .* training split of demo:4"):
        check_batch_sizes(moved, load_dataset("demo:4", cache_dir=tmp_path / "cache"))


@pytest.mark.parametrize("device, size, train_images, batches", [
    ("cpu", 128, 9000, (32, 64, 128)),  # a CPU's, whatever the data
    ("cuda", 128, 9000, (128, 256, 512)),  # fills an H200 at 128 px
    ("cuda", 224, 9000, (64, 128, 256)),
    ("cuda", 32, 50_000, (512, 1024, 2048)),
    ("cuda", 128, 4000, (64, 128, 256)),  # 4,000 images: at least 8 steps an epoch
    ("cuda", 32, 500, (32, 64, 128)),  # the demo: never below a CPU's
    ("cuda", 128, None, (128, 256, 512)),  # training split unknown
])
def test_a_gpu_trial_samples_batches_that_fill_it_within_its_training_split(
        device, size, train_images, batches):
    from spaces import space_dimensions

    context = SpaceContext(device=device, image_size=size, train_images=train_images)
    for strategy in STRATEGIES:
        dims = space_dimensions(strategy, context)
        assert dims["batch_size"].choices == batches
        # lr ranges scale with the square root of the batch sizes' growth over a CPU's
        scale = (batches[-1] / 128) ** 0.5
        low = 0.01 if strategy == "scratch" else 1e-3  # random weights take larger steps
        assert dims["lr_sgd"].low == pytest.approx(low * scale)
        assert dims["lr_sgd"].high == pytest.approx(0.3 * scale)
        assert dims["lr_adamw"].high == pytest.approx(0.01 * scale)


def test_show_space_prints_what_a_gpu_search_samples():
    from types import SimpleNamespace

    from spaces.overrides import show_spaces

    run = SimpleNamespace(strategies=("scratch",), space_file=None, backbone="resnet18",
                          backbones=("resnet18",), max_epochs=5, image_size=128,
                          gpus_per_trial=0.25)
    assert "batch_size: [128, 256, 512]" in show_spaces(run, train_images=9000)
    # at 128 px the random-resized crop replaces CIFAR's pad-and-crop, in the preset too
    assert "augment: [none, flip, rrc, trivialaugment, randaugment]" in show_spaces(run)
    # the scratch preset at the batch nearest its recipe's steps: 5 epochs of 9,000 images at
    # 128, the smallest; 200,000 images fill the steps at the largest
    assert "batch_size=128 augment=rrc crop_scale=0.35" in show_spaces(run, train_images=9000)
    assert "batch_size=512 augment=rrc" in show_spaces(run, train_images=200_000)
    assert "sgd: {low: 0.02, high: 0.6, log: true}" in show_spaces(run, train_images=9000)
    cpu = SimpleNamespace(**{**vars(run), "gpus_per_trial": 0.0})
    assert "batch_size: [32, 64, 128]" in show_spaces(cpu, train_images=9000)
