"""The best-config file, best/<strategy>.yaml: everything needed to train a trial again.

    python search/run.py --config experiments/NAME/best/unfrozen.yaml

Its run settings use the CLI's own option names, so `--config` only sets the CLI's defaults,
and flags given with it still win. A file from another version, or with keys this version does
not know, is refused with a message instead of being half-applied. Only yaml (and the
standard-library-only store.atomic) is imported here, so the CLI reads a config without
loading pandas or torch.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from store.atomic import atomic_file

VERSION_KEY, VERSION = "transfer_search_config", 1
# run settings, by their CLI option names (dashes as underscores): the data, the model and its
# starting weights, the trial's epoch budget (its lr schedule spans it) and the seed
RUN_KEYS = ("strategy", "data", "split", "image_size", "backbone", "pretrained",
            "pretrain_data", "pretext_data", "pretrain_epochs", "pretext_init",
            "pretext_decoder_epochs", "pretrain_patience", "pretext_loss", "pretext_schedule",
            "weights", "max_epochs", "seed")
# what the search measured, for the reader; not read back
RECORD_KEYS = ("best_epoch", "val_acc", "trial_id", "experiment")


class ConfigError(ValueError):
    """A config file that cannot be rerun; the message names the file and the fix."""


def best_config(meta: dict, strategy: str, weights_label: str, hyperparameters: dict,
                record: dict) -> dict:
    """The config of one trial: experiment.json's settings, its weights, its hyperparameters."""
    weights, pretrained = meta.get("weights"), weights_label
    if weights_label.startswith("file:"):
        weights, pretrained = weights_label.removeprefix("file:"), None
    split = meta.get("split") or (0.7, 0.15, 0.15)
    config = {
        VERSION_KEY: VERSION,
        "strategy": strategy,
        "data": meta["data"],
        "split": ",".join(f"{x:g}" for x in split),
        "image_size": meta["image_size"],
        # the trial's own where the search sampled one (--backbone A,B)
        "backbone": hyperparameters.get("backbone") or meta["backbone"],
        # STRATEGY=STAGE: a bare stage would not reach colorization or scratch
        "pretrained": f"{strategy}={pretrained}" if pretrained else None,
        # each stage's data only where this strategy's stage reads it, so --config accepts it
        "pretrain_data": meta.get("pretrain_data") if pretrained == "supervised" else None,
        "pretext_data": meta.get("pretext_data") if pretrained == "colorization" else None,
        "pretrain_epochs": meta["pretrain_epochs"],
        "pretext_init": meta.get("pretext_init", "scratch"),
        "pretext_decoder_epochs": meta.get("pretext_decoder_epochs", 0),
        "pretrain_patience": meta.get("pretrain_patience", 6),
        # the colorization stage's own: --config refuses them for a strategy without it
        "pretext_loss": meta.get("pretext_loss", "l1") if pretrained == "colorization" else "l1",
        "pretext_schedule": meta.get("pretext_schedule") if pretrained == "colorization"
        else None,
        "weights": weights,
        "max_epochs": meta["max_epochs"],
        "seed": meta["seed"],
        "hyperparameters": hyperparameters,
    }
    return {**config, **{k: record[k] for k in RECORD_KEYS if k in record}}


def write_best_config(path: Path, config: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))


def read_best_config(path: str | Path) -> dict:
    """A config's run settings and hyperparameters, checked; raises ConfigError."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})"
                          ) from None
    if not isinstance(config, dict) or VERSION_KEY not in config:
        raise ConfigError(f"--config {path}: not a best config (no {VERSION_KEY} key); pass a "
                          "best/<strategy>.yaml written by a search")
    if config[VERSION_KEY] != VERSION:
        raise ConfigError(f"--config {path}: written by config version {config[VERSION_KEY]}, "
                          f"this version reads {VERSION}; export it again with this version")
    unknown = sorted(set(config) - {VERSION_KEY, "hyperparameters", *RUN_KEYS, *RECORD_KEYS})
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}; known keys: "
                          f"{sorted(RUN_KEYS)} and hyperparameters")
    missing = [k for k in ("strategy", "hyperparameters") if k not in config]
    if missing:
        raise ConfigError(f"--config {path}: missing {missing}")
    if not isinstance(config["hyperparameters"], dict):
        raise ConfigError(f"--config {path}: hyperparameters must be a mapping of names to "
                          "values")
    return {k: config[k] for k in (*RUN_KEYS, "hyperparameters") if k in config}
