"""The experiment spec: CLI arguments, checked, as one frozen dataclass.

Everything that can be wrong with the user's input is found here or while the data loads, before
Ray starts and before anything is written. Errors are `UsageError`s whose message is shown as is.
Only light modules are imported here, so `--help` and input errors answer without loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from search.checks import (
    check_address,
    check_backbones,
    check_data,
    check_free_space,
    check_numbers,
    check_pretraining,
    check_search,
    check_space_backbones,
    check_storage_folder,
    parse_backbones,
    parse_duration,
    parse_keep,
    parse_pretrained,
    parse_split,
    parse_strategies,
)
from search.options import (  # noqa: F401 (ArgumentParser, UsageError: re-exported)
    DEFAULT_SAMPLES,
    ArgumentParser,
    UsageError,
    build_parser,
    with_scheduler_defaults,
)
from trainables.cache import area, cache_root, fingerprint
from trainables.config import TrialConfig
from trainables.strategies import STRATEGIES


@dataclass(frozen=True)
class ExperimentSpec:
    strategies: tuple[str, ...]
    data: str
    backbone: str
    samples: int | None  # trials per strategy; None: as many as fit in time_budget_s
    max_epochs: int
    grace_period: int
    gpus_per_trial: float
    cpus_per_trial: float
    address: str | None
    storage: Path  # the local experiments folder; for a URI, its staging copy in the cache
    name: str
    seed: int
    weights: str | None
    image_size: int
    pretrain_epochs: int
    split: tuple[float, float, float]
    cache_dir: Path
    # the stage of each strategy whose weights do not come from its default stage
    pretrained: dict[str, str] = field(default_factory=dict)
    pretrain_data: str | None = None  # the supervised stage's labeled source
    pretext_data: str | None = None  # the colorization stage's unlabeled images
    pretext_init: str = "scratch"
    pretext_decoder_epochs: int = 0
    pretrain_patience: int = 6
    pretext_loss: str = "l1"
    pretext_schedule: str | None = None  # as given; search.checks.parse_schedule reads it
    max_failures: int = 2
    keep_checkpoints: int | None = 3  # top trials per strategy whose best checkpoint stays
    final_eval: int = 0  # seeds of the final test evaluation after the search; 0: none
    hyperparameters: dict | None = None  # --config: train these once instead of searching
    config_file: str | None = None
    searcher: str = "tpe"
    scheduler: str = "asha"
    reduction_factor: int = 2
    objective: str = "acc"
    space_file: str | None = None  # --space overrides (a copy is kept in the experiment)
    warm_start: dict[str, list[dict]] | None = None  # per strategy, configs to try first
    optuna_storage: str | None = None  # None: SQLite in the experiment directory
    max_concurrent: int | None = None
    verbosity: str = "normal"
    resume: bool = False
    show_space: bool = False
    storage_uri: str | None = None  # --storage s3://..., gs://...: where the experiment lives
    dashboard_host: str = "127.0.0.1"  # a local Ray's dashboard: loopback unless asked
    dashboard: bool = True  # start a local Ray's dashboard (not with --no-dashboard)
    compile: bool = False  # torch.compile each trial's network
    time_budget_s: float | None = None  # --time-budget: the trials' wall-clock time, all shares
    preset: bool = True  # each strategy's preset is its first trial (not with --no-preset)

    @property
    def exp_dir(self) -> Path:
        return self.storage / self.name

    @property
    def exp_uri(self) -> str:
        """Where Tune writes trials and the experiment's files end up: the URI, else exp_dir."""
        return experiment_location(self.storage, self.storage_uri, self.name)

    @property
    def backbones(self) -> tuple[str, ...]:
        """--backbone's names: one, or several that the search samples from."""
        return tuple(self.backbone.split(","))

    @property
    def has_study(self) -> bool:
        """Whether each strategy has an Optuna study: not for --config (one given config) nor
        for PBT (Ray runs it without a searcher)."""
        return self.hyperparameters is None and self.scheduler != "pbt"


def check_model(backbone: str, image_size: int, storage: Path | None) -> None:
    """The images are big enough for every layer of the backbone, and a local --storage has
    room for a trial's checkpoints (model and optimizer state: up to 3 floats per weight)."""
    from trainables.models import shape_check

    params, problem, larger = shape_check(backbone, image_size)
    if problem:
        fix = f"use --image-size {larger} or more" if larger else "choose another --backbone"
        raise UsageError(f"--image-size {image_size}: too small for {backbone} ({problem}); "
                         f"{fix}")
    if storage is not None:
        check_free_space(storage, 3 * 4 * params, backbone)


def parse_spec(argv: list[str] | None = None, prog: str = "run.py") -> ExperimentSpec:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    check_address(args.address)
    if args.resume:
        return resume_spec(parser, args, argv)
    hyperparameters = None
    if args.config:
        check_no_search_flags(parser, args)
        args, hyperparameters = apply_config(parser, args, argv)
    args = with_samples(with_scheduler_defaults(args))
    strategies = parse_strategies(args.strategy)
    if hyperparameters is not None and len(strategies) > 1:
        raise UsageError("--config trains one strategy; it cannot be combined with several "
                         "--strategy names")
    check_numbers(args)
    time_budget_s = parse_duration(args.time_budget)
    is_demo = check_data(args)
    pretrained = parse_pretrained(args.pretrained, strategies)
    check_pretraining(args, is_demo, pretrained, strategies)
    check_search(args)
    name = args.name or (f"{'-'.join(strategies) if args.strategy != 'all' else 'all'}-"
                         f"{'config-' if args.config else ''}{time.strftime('%Y%m%d-%H%M%S')}")
    storage, storage_uri = experiment_storage(args.storage, name, args.cache_dir)
    if experiment_exists(storage, storage_uri, name):
        raise UsageError(f"experiment {experiment_location(storage, storage_uri, name)} already "
                         "exists; choose another --name, "
                         f"or continue it with --resume {name}")
    backbones = parse_backbones(args.backbone)
    space_file = check_space(args.space, strategies, args.scheduler, backbones)
    warm_start = check_warm_start(args.warm_start, strategies)
    check_backbones(backbones)
    if hyperparameters is not None and len(backbones) > 1:
        raise UsageError(f"--config trains one config on one backbone; give one --backbone, "
                         f"not {args.backbone}")
    for backbone in backbones:
        check_model(backbone, args.image_size, None if storage_uri else storage)
    return ExperimentSpec(
        strategies=strategies, data=args.data, backbone=",".join(backbones),
        samples=1 if hyperparameters is not None else args.samples,
        max_epochs=args.max_epochs, grace_period=min(args.grace_period, args.max_epochs),
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        address=args.address, storage=storage, name=name, seed=args.seed, weights=args.weights,
        image_size=args.image_size, pretrain_epochs=args.pretrain_epochs,
        split=parse_split(args.split), cache_dir=cache_root(args.cache_dir),
        pretrained=pretrained, pretrain_data=args.pretrain_data,
        pretext_data=args.pretext_data, pretext_init=args.pretext_init,
        pretext_decoder_epochs=args.pretext_decoder_epochs,
        pretrain_patience=args.pretrain_patience, pretext_loss=args.pretext_loss,
        pretext_schedule=args.pretext_schedule, max_failures=args.max_failures,
        keep_checkpoints=parse_keep(args.keep_checkpoints), final_eval=args.final_eval,
        hyperparameters=hyperparameters, config_file=args.config, searcher=args.searcher,
        scheduler=args.scheduler, reduction_factor=args.reduction_factor,
        objective=args.objective, space_file=space_file, warm_start=warm_start,
        optuna_storage=check_storage(args.optuna_storage), max_concurrent=args.max_concurrent,
        verbosity=args.verbosity, show_space=args.show_space, storage_uri=storage_uri,
        dashboard_host=args.dashboard_host, dashboard=args.dashboard, compile=args.compile,
        time_budget_s=time_budget_s, preset=not args.no_preset,
    )


def with_samples(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with --samples filled in where not given: as many trials as fit in --time-budget
    (None), except for PBT, whose population is drawn before it starts; else the default."""
    if args.samples is not None:
        return args
    unbounded = args.time_budget is not None and args.scheduler != "pbt"
    return argparse.Namespace(**{**vars(args),
                                 "samples": None if unbounded else DEFAULT_SAMPLES})


# what only a search reads: --config trains one given config, so these would do nothing
SEARCH_FLAGS = ("samples", "time_budget", "searcher", "scheduler", "reduction_factor",
                "objective", "space", "warm_start", "optuna_storage", "show_space", "no_preset")


def check_no_search_flags(parser: ArgumentParser, args: argparse.Namespace) -> None:
    defaults = vars(parser.parse_args([]))
    given = [k for k in SEARCH_FLAGS if getattr(args, k) != defaults[k]]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"--config trains the given config once, without a search; drop {flags}")


# what --resume may change: where things are and how much is printed, never what runs
RESUME_FLAGS = ("resume", "storage", "address", "dashboard_host", "dashboard", "cache_dir",
                "verbosity", "max_concurrent", "keep_checkpoints")


def resume_spec(parser: ArgumentParser, args: argparse.Namespace,
                argv: list[str] | None) -> ExperimentSpec:
    """--resume NAME: the experiment's own spec from its experiment.json."""
    from store.layout import EXPERIMENT_FILE, is_experiment, read_experiment
    from store.uri import download

    defaults = vars(parser.parse_args([]))
    changed = sorted(k for k, v in vars(args).items()
                     if k not in RESUME_FLAGS and v != defaults[k])
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UsageError(f"--resume {args.resume} continues with the experiment's own settings; "
                         f"drop {flags}")
    storage, storage_uri = experiment_storage(args.storage, args.resume, args.cache_dir)
    if storage_uri:  # the driver's files; Tune restores its trials from the URI itself
        shutil.rmtree(storage / args.resume, ignore_errors=True)
        with remote_errors(storage_uri):
            download(experiment_location(storage, storage_uri, args.resume),
                     storage / args.resume)
    if not is_experiment(storage / args.resume):
        where = experiment_location(storage, storage_uri, args.resume)
        raise UsageError(f"--resume {args.resume}: no experiment {where} (its "
                         f"{EXPERIMENT_FILE} is missing); check --name and --storage")
    meta = read_experiment(storage / args.resume)
    spec = spec_from_experiment(meta, storage / args.resume, args.cache_dir, args.address)
    spec = replace(spec, storage_uri=storage_uri)
    keep = (parse_keep(args.keep_checkpoints) if args.keep_checkpoints != "3"
            else spec.keep_checkpoints)
    return replace(spec, resume=True, verbosity=args.verbosity, keep_checkpoints=keep,
                   dashboard_host=args.dashboard_host, dashboard=args.dashboard,
                   max_concurrent=args.max_concurrent or spec.max_concurrent)


def experiment_storage(text: str, name: str, cache_dir: str | None
                       ) -> tuple[Path, str | None]:
    """--storage: (the local experiments folder, the URI or None). A URI's experiments are
    staged in the cache, in a folder of their own per URI."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise UsageError(f"--name {name}: use letters, digits, '.', '_' and '-' only")
    from store.uri import is_uri, open_uri

    if not is_uri(text):
        storage = Path(text).expanduser().resolve()
        check_storage_folder(storage)
        return storage, None
    with remote_errors(text):
        open_uri(text)
    return area(cache_root(cache_dir), "staging") / fingerprint(text), text


def experiment_location(storage: Path, storage_uri: str | None, name: str) -> str:
    """Where experiment `name` lives: under the --storage URI, else in the local folder."""
    from store.uri import join_uri

    return join_uri(storage_uri, name) if storage_uri else str(storage / name)


def experiment_exists(storage: Path, storage_uri: str | None, name: str) -> bool:
    if not storage_uri:
        return (storage / name).exists()
    from store.uri import exists

    with remote_errors(storage_uri):
        found = exists(experiment_location(storage, storage_uri, name))
    if not found:  # a staging copy left by a run that never uploaded: nothing to keep
        shutil.rmtree(storage / name, ignore_errors=True)
    return found


@contextlib.contextmanager
def remote_errors(uri: str):
    """Storage that cannot be reached is a usage error: the message says how to fix it."""
    from store.uri import RemoteError

    try:
        yield
    except (RemoteError, OSError) as error:
        raise UsageError(f"--storage {uri}: cannot reach it ({error}); check the URI, the "
                         "credentials (AWS_* or GOOGLE_APPLICATION_CREDENTIALS) and the "
                         "network, or pass a local or shared path") from None


def check_storage(url: str | None) -> str | None:
    if url is None:
        return None
    from search.study import check_storage_url

    return check_storage_url(url)


def check_space(path: str | None, strategies: tuple[str, ...], scheduler: str,
                backbones: tuple[str, ...] = ()) -> str | None:
    """--space: read and checked now, so a bad file costs one message and nothing else."""
    if path is None:
        return None
    from spaces.overrides import SpaceFileError, load_space_file

    try:
        overrides = load_space_file(path, strategies)
    except SpaceFileError as error:
        raise UsageError(str(error)) from None
    # PBT moves lr and weight decay itself, within the built-in ranges, during every trial
    moved = sorted({k for dims in overrides.values() for k in dims
                    if k.startswith(("lr_", "weight_decay_"))})
    if scheduler == "pbt" and moved:
        raise UsageError(f"--space {path}: sets {', '.join(moved)}, which --scheduler pbt "
                         "perturbs within its own ranges; drop them from the file, or use "
                         "another scheduler")
    check_space_backbones(path, overrides, backbones)
    return str(Path(path).expanduser().resolve())


def check_warm_start(path: str | None, strategies: tuple[str, ...]
                     ) -> dict[str, list[dict]] | None:
    if path is None:
        return None
    from search.warm_start import load_warm_start

    return load_warm_start(path, strategies)


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """--config: its run settings become the CLI's defaults, so flags given too still win."""
    from store.best_config import ConfigError, read_best_config

    try:
        config = read_best_config(args.config)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    if config["strategy"] not in STRATEGIES:
        raise UsageError(f"--config {args.config}: strategy {config['strategy']!r}: invalid "
                         f"choice (choose from {', '.join(STRATEGIES)})")
    if args.strategy not in (None, config["strategy"]):
        raise UsageError(f"--strategy {args.strategy} conflicts with --config {args.config}, "
                         f"which is for {config['strategy']}")
    hyperparameters = config.pop("hyperparameters")
    try:
        TrialConfig.from_dict(hyperparameters)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--config {args.config}: bad hyperparameters: {error}") from None
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    check_config_choices(parser, args, args.config)
    if hyperparameters.get("backbone"):  # a searched backbone: --backbone given too wins
        hyperparameters = {**hyperparameters, "backbone": args.backbone}
    return args, hyperparameters


def check_config_choices(parser: argparse.ArgumentParser, args: argparse.Namespace,
                         path: str) -> None:
    """Defaults skip argparse's choices check, so values from a config file get it here."""
    for action in parser._actions:  # argparse has no public list of its options
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            raise UsageError(f"--config {path}: {action.dest} {value!r}: invalid choice (choose "
                             f"from {', '.join(map(str, action.choices))})")


def spec_from_experiment(meta: dict, exp_dir: Path, cache_dir: str | None = None,
                         address: str | None = None) -> ExperimentSpec:
    """The spec an experiment ran with, read back from its experiment.json, located where the
    experiment now is (it may have been copied) and with this machine's cache."""
    names = {f.name for f in fields(ExperimentSpec)}
    values = {k: v for k, v in meta.items() if k in names}
    strategies = tuple(meta["strategies"])
    pretrained = meta.get("pretrained") or {}
    if isinstance(pretrained, str):  # written before stages were chosen per strategy
        pretrained = parse_pretrained(pretrained, strategies)
    values.update(strategies=strategies, split=tuple(meta["split"]), pretrained=pretrained,
                  optuna_storage=meta.get("optuna_storage_flag"),
                  storage=Path(exp_dir).resolve().parent, name=Path(exp_dir).resolve().name)
    if meta.get("space_file"):  # the experiment's own copy, wherever it now is
        values["space_file"] = str(Path(exp_dir).resolve() / Path(meta["space_file"]).name)
    if cache_dir is None and Path(meta["cache_dir"]).is_dir():
        cache = Path(meta["cache_dir"])
    else:
        cache = cache_root(cache_dir)
    return replace(ExperimentSpec(**values), cache_dir=cache, address=address)

