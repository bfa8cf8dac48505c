"""The experiment spec: CLI arguments, checked, as one frozen dataclass.

Everything that can be wrong with the user's input is found here or while the data loads, before
Ray starts and before anything is written. Errors are `UsageError`s whose message is shown as is.
Only light modules are imported here, so `--help` and input errors answer without loading torch.
"""

from __future__ import annotations

import argparse
import difflib
import re
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from trainables.cache import cache_root
from trainables.config import STAGES, TrialConfig
from trainables.data.dataset import DataError
from trainables.data.demo import demo_size
from trainables.strategies import STRATEGIES

DESCRIPTION = """\
Search transfer-learning strategies for an image-classification dataset with Ray Tune and
Optuna: every strategy gets the same number of trials, ASHA stops the poor ones early, and the
leaderboard and best configs land in the experiment directory. Bad input exits with code 2
before anything is written.
"""

EPILOG = """\
examples:
  # every default: the offline demo data, ResNet-18, 8 trials of up to 6 epochs
  python search/run.py --strategy unfrozen

  # every strategy on your own ImageFolder tree at 64 px, with a bigger budget
  python search/run.py --strategy all --data ~/photos --image-size 64 --samples 24 \\
      --max-epochs 12 --name photos-all

  # join a running Ray cluster, half a GPU per trial, a local ImageNet checkpoint
  python search/run.py --strategy frozen --data torchvision:CIFAR10 \\
      --weights resnet18.safetensors --address auto --gpus-per-trial 0.5

The same command runs as `transfer-search ...` and `python -m search ...`.
"""


class UsageError(ValueError):
    """Bad command-line input; run.py prints the message and exits with code 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        raise UsageError(f"{message} (see --help)")


@dataclass(frozen=True)
class ExperimentSpec:
    strategies: tuple[str, ...]
    data: str
    backbone: str
    samples: int
    max_epochs: int
    grace_period: int
    gpus_per_trial: float
    cpus_per_trial: float
    address: str | None
    storage: Path
    name: str
    seed: int
    weights: str | None
    image_size: int
    pretrain_epochs: int
    split: tuple[float, float, float]
    cache_dir: Path
    pretrained: str | None = None  # None: each strategy's default stage
    pretrain_data: str | None = None
    pretext_init: str = "scratch"
    pretext_decoder_epochs: int = 0
    max_failures: int = 2
    keep_checkpoints: int | None = 3  # top trials per strategy whose best checkpoint stays
    final_eval: int = 0  # seeds of the final test evaluation after the search; 0: none
    hyperparameters: dict | None = None  # --config: train these once instead of searching
    config_file: str | None = None

    @property
    def exp_dir(self) -> Path:
        return self.storage / self.name


def build_parser(prog: str = "run.py") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_options(p.add_argument_group("data"))
    add_strategy_options(p.add_argument_group("strategies and weights"))
    add_search_options(p.add_argument_group("search"))
    add_resource_options(p.add_argument_group("resources and cluster"))
    add_output_options(p.add_argument_group("output"))
    return p


def add_data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", default="demo", metavar="DATA",
                   help="demo (built in, offline), demo:N (N train images per class), "
                   "torchvision:NAME (e.g. CIFAR10), or an ImageFolder directory: class "
                   "folders, or train/ val/ test/ folders of class folders (default: demo)")
    g.add_argument("--split", default="0.7,0.15,0.15", metavar="TRAIN,VAL,TEST",
                   help="fractions for data without given splits, stratified by --seed "
                   "(default: %(default)s)")
    g.add_argument("--image-size", type=int, default=32, metavar="PX",
                   help="pixels per side: the shorter side is resized to this, then "
                   "centre-cropped (default: %(default)s)")


def add_strategy_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--strategy", choices=[*STRATEGIES, "all"],
                   help="the strategy to search, or all of them with the same budget each "
                   "(required; or from --config)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="a best/<strategy>.yaml exported by an earlier search: train exactly "
                   "that config once, without a search; flags given too override its settings "
                   "(default: none, search)")
    g.add_argument("--backbone", default="resnet18", metavar="NAME",
                   help="any timm model name: resnet50, vgg16, efficientnet_b0, "
                   "convnext_tiny, vit_tiny_patch16_224, ... (default: %(default)s)")
    g.add_argument("--pretrained", choices=STAGES, default=None,
                   help="where the pretrained strategies' weights come from (default: per "
                   "strategy: scratch none, colorization colorization, the others imagenet, "
                   "or supervised on the demo)")
    g.add_argument("--pretrain-data", default=None, metavar="DATA",
                   help="what a pretraining stage trains on: a labeled set for supervised "
                   "(ImageFolder, torchvision:NAME, demo), any images for colorization, also "
                   "a flat folder (default: the demo's source classes for supervised, the "
                   "target's training images for colorization)")
    g.add_argument("--pretrain-epochs", type=int, default=10, metavar="N",
                   help="epochs of a pretraining stage (default: %(default)s)")
    g.add_argument("--pretext-init", choices=("scratch", "imagenet"), default="scratch",
                   help="how the colorization encoder starts (default: %(default)s)")
    g.add_argument("--pretext-decoder-epochs", type=int, default=0, metavar="N",
                   help="colorization: the first N pretraining epochs train the decoder "
                   "alone, the encoder frozen (default: %(default)s)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="a local backbone checkpoint (.pt, .pth, .safetensors) for every "
                   "pretrained strategy, instead of its stage (default: none)")


def add_search_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--samples", type=int, default=8, metavar="N",
                   help="trials per strategy (default: %(default)s)")
    g.add_argument("--max-epochs", type=int, default=6, metavar="N",
                   help="epoch budget of one trial (default: %(default)s)")
    g.add_argument("--grace-period", type=int, default=2, metavar="N",
                   help="ASHA's first rung: epochs every trial runs before it can be stopped "
                   "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seeds the sampler, the trials, the pretraining stages, the data split "
                   "and the demo's images (default: %(default)s)")
    g.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help="times a failed trial is restarted from its last checkpoint before it "
                   "counts as errored (default: %(default)s)")
    g.add_argument("--final-eval", type=int, default=0, metavar="SEEDS",
                   help="after the search, retrain each strategy's best config SEEDS times and "
                   "report test accuracy (search/evaluate.py) (default: 0, no test evaluation)")


def add_resource_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N",
                   help="CPU cores per trial and per pretraining task; also its torch threads "
                   "(default: %(default)s)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N",
                   help="GPUs per trial; a fraction such as 0.5 packs trials onto one GPU "
                   "(default: %(default)s)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="a Ray cluster to join: auto for the one `ray up` started, or "
                   "HOST:PORT (default: start a local Ray instance)")


def add_output_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--storage", default="experiments", metavar="DIR",
                   help="folder for experiments (default: ./%(default)s)")
    g.add_argument("--name", default=None, metavar="NAME",
                   help="experiment name: letters, digits, '.', '_' and '-' (default: "
                   "STRATEGY-YYYYMMDD-HHMMSS)")
    g.add_argument("--keep-checkpoints", default="3", metavar="N|all",
                   help="after the search, keep the best-epoch checkpoint of each strategy's N "
                   "best trials and delete the rest, or keep all (default: %(default)s)")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="prepared data, downloads, pretraining stages and features, shared by "
                   "experiments on this machine (default: $TRANSFER_SEARCH_CACHE, else "
                   "~/.cache/transfer-search)")


def check_backbone(name: str) -> None:
    import timm  # loads torch: seconds, so only once the cheaper checks have passed

    if timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UsageError(f"--backbone {name}: not a timm model{hint}")


def parse_spec(argv: list[str] | None = None, prog: str = "run.py") -> ExperimentSpec:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    hyperparameters = None
    if args.config:
        args, hyperparameters = apply_config(parser, args, argv)
    if args.strategy is None:
        raise UsageError("--strategy is required (or --config FILE from an earlier search)")
    check_numbers(args)
    try:
        is_demo = demo_size(args.data) is not None
    except DataError as error:
        raise UsageError(str(error)) from None
    is_path = not is_demo and not args.data.startswith("torchvision:")
    if is_path and not Path(args.data).expanduser().exists():
        raise UsageError(f"--data {args.data}: no such file or directory")
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    check_pretraining(args, is_demo)
    split = parse_split(args.split)
    keep = parse_keep(args.keep_checkpoints)
    default_name = f"{args.strategy}-{'config-' if args.config else ''}"
    name = args.name or f"{default_name}{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UsageError(f"--name {name}: use letters, digits, '.', '_' and '-' only")
    storage = Path(args.storage).expanduser().resolve()
    if (storage / name).exists():
        raise UsageError(f"experiment {storage / name} already exists; choose another --name")
    if args.strategy == "all" and hyperparameters is not None:
        raise UsageError("--config trains one strategy; it cannot be combined with --strategy all")
    check_backbone(args.backbone)
    strategies = tuple(STRATEGIES) if args.strategy == "all" else (args.strategy,)
    return ExperimentSpec(
        strategies=strategies, data=args.data, backbone=args.backbone,
        samples=1 if hyperparameters is not None else args.samples,
        max_epochs=args.max_epochs, grace_period=min(args.grace_period, args.max_epochs),
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        address=args.address, storage=storage, name=name, seed=args.seed, weights=args.weights,
        image_size=args.image_size, pretrain_epochs=args.pretrain_epochs,
        split=split, cache_dir=cache_root(args.cache_dir), pretrained=args.pretrained,
        pretrain_data=args.pretrain_data, pretext_init=args.pretext_init,
        pretext_decoder_epochs=args.pretext_decoder_epochs, max_failures=args.max_failures,
        keep_checkpoints=keep, final_eval=args.final_eval, hyperparameters=hyperparameters,
        config_file=args.config,
    )


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """--config: its run settings become the CLI's defaults, so flags given too still win."""
    from analysis.best_config import ConfigError, read_best_config

    try:
        config = read_best_config(args.config)
    except ConfigError as error:
        raise UsageError(str(error)) from None
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
    return args, hyperparameters


def check_config_choices(parser: argparse.ArgumentParser, args: argparse.Namespace,
                         path: str) -> None:
    """Defaults skip argparse's choices check, so values from a config file get it here."""
    for action in parser._actions:  # argparse has no public list of its options
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            raise UsageError(f"--config {path}: {action.dest} {value!r}: invalid choice (choose "
                             f"from {', '.join(map(str, action.choices))})")


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in [("--samples", args.samples, 1), ("--max-epochs", args.max_epochs, 1),
                             ("--grace-period", args.grace_period, 1),
                             ("--image-size", args.image_size, 8),
                             ("--pretrain-epochs", args.pretrain_epochs, 1),
                             ("--max-failures", args.max_failures, 0),
                             ("--final-eval", args.final_eval, 0)]:
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise UsageError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")


def parse_keep(text: str) -> int | None:
    """--keep-checkpoints: a number of trials per strategy, or all (None)."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--keep-checkpoints {text}: expected a number of trials (1 or more) "
                         "or all")
    return int(text)


def check_pretraining(args: argparse.Namespace, is_demo: bool) -> None:
    if args.pretrained == "supervised" and not is_demo and not args.pretrain_data:
        raise UsageError("--pretrained supervised needs --pretrain-data (a labeled source set) "
                         "unless --data is the demo, which has its own source classes")
    if args.pretrain_data and not args.pretrain_data.startswith(("demo", "torchvision:")) \
            and not Path(args.pretrain_data).expanduser().is_dir():
        raise UsageError(f"--pretrain-data {args.pretrain_data}: no such directory")
    if not 0 <= args.pretext_decoder_epochs <= args.pretrain_epochs:
        raise UsageError("--pretext-decoder-epochs must be between 0 and --pretrain-epochs")


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or parts[0] <= 0 or parts[1] <= 0 or parts[2] < 0 or not (
            abs(sum(parts) - 1) < 1e-6):
        raise UsageError(f"--split {text}: expected three fractions train,val,test summing to 1 "
                         "(train and val above 0)")
    return parts  # type: ignore[return-value]


def spec_from_experiment(meta: dict, exp_dir: Path, cache_dir: str | None = None,
                         address: str | None = None) -> ExperimentSpec:
    """The spec an experiment ran with, read back from its experiment.json, located where the
    experiment now is (it may have been copied) and with this machine's cache."""
    names = {f.name for f in fields(ExperimentSpec)}
    values = {k: v for k, v in meta.items() if k in names}
    values.update(strategies=tuple(meta["strategies"]), split=tuple(meta["split"]),
                  storage=Path(exp_dir).resolve().parent, name=Path(exp_dir).resolve().name)
    if cache_dir is None and Path(meta["cache_dir"]).is_dir():
        cache = Path(meta["cache_dir"])
    else:
        cache = cache_root(cache_dir)
    return replace(ExperimentSpec(**values), cache_dir=cache, address=address)

