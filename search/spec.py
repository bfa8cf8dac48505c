"""The experiment spec: CLI arguments, checked, as one frozen dataclass.

Everything that can be wrong with the user's input is found here or while the data loads, before
Ray starts and before anything is written. Errors are `UsageError`s whose message is shown as is.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import timm

from trainables.data import DataError, parse_demo_spec
from trainables.stages import STAGES
from trainables.strategies import STRATEGIES


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

    @property
    def exp_dir(self) -> Path:
        return self.storage / self.name


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="run.py", description="Search transfer strategies with Ray Tune.")
    p.add_argument("--strategy", required=True, choices=[*STRATEGIES, "all"],
                   help="one registered strategy, or all of them with the same budget each")
    p.add_argument("--data", default="demo",
                   help="demo, demo:N (N train images per class), torchvision:NAME, or an "
                   "ImageFolder directory (class folders, or train/ val/ test/ folders)")
    p.add_argument("--split", default="0.7,0.15,0.15",
                   help="train,val,test fractions for data without given splits")
    p.add_argument("--backbone", default="resnet18", help="any timm model name")
    p.add_argument("--samples", type=int, default=8, help="trials per strategy")
    p.add_argument("--max-epochs", type=int, default=6, help="epoch budget of one trial")
    p.add_argument("--grace-period", type=int, default=2,
                   help="ASHA's first rung: epochs every trial runs before it can be stopped")
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--address", default=None, help="Ray cluster address (auto: join ray up's)")
    p.add_argument("--storage", default="experiments", help="folder for experiments")
    p.add_argument("--cache-dir", default=None,
                   help="prepared data, downloads, pretraining stages and features, shared by "
                   "experiments on this machine (default $TRANSFER_SEARCH_CACHE, else "
                   "~/.cache/transfer-search)")
    p.add_argument("--name", default=None, help="experiment name (default: strategy-time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="local backbone checkpoint (.pt, .pth, .safetensors) for pretrained "
                   "strategies")
    p.add_argument("--image-size", type=int, default=32,
                   help="pixels per side: shorter side resized to this, then centre-cropped")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="epochs of a pretraining stage")
    p.add_argument("--pretrained", choices=STAGES, default=None,
                   help="where pretrained strategies' weights come from (default: scratch none; "
                   "colorization colorization; others imagenet, or supervised on the demo)")
    p.add_argument("--pretrain-data", default=None,
                   help="data the stage trains on: a labeled set for supervised (ImageFolder, "
                   "torchvision:NAME, demo), any images for colorization (also a flat folder)")
    p.add_argument("--pretext-init", choices=("scratch", "imagenet"), default="scratch",
                   help="how the colorization encoder starts")
    p.add_argument("--pretext-decoder-epochs", type=int, default=0,
                   help="colorization: first epochs train the decoder alone (staged schedule)")
    return p


def check_backbone(name: str) -> None:
    if timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UsageError(f"--backbone {name}: not a timm model{hint}")


def parse_spec(argv: list[str] | None = None) -> ExperimentSpec:
    args = build_parser().parse_args(argv)
    for flag, value, low in [("--samples", args.samples, 1), ("--max-epochs", args.max_epochs, 1),
                             ("--grace-period", args.grace_period, 1),
                             ("--image-size", args.image_size, 8),
                             ("--pretrain-epochs", args.pretrain_epochs, 1)]:
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise UsageError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    try:
        is_demo = parse_demo_spec(args.data) is not None
    except DataError as error:
        raise UsageError(str(error)) from None
    is_path = not is_demo and not args.data.startswith("torchvision:")
    if is_path and not Path(args.data).expanduser().exists():
        raise UsageError(f"--data {args.data}: no such file or directory")
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    check_pretraining(args, is_demo)
    check_backbone(args.backbone)
    name = args.name or f"{args.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UsageError(f"--name {name}: use letters, digits, '.', '_' and '-' only")
    storage = Path(args.storage).expanduser().resolve()
    if (storage / name).exists():
        raise UsageError(f"experiment {storage / name} already exists; choose another --name")
    strategies = tuple(STRATEGIES) if args.strategy == "all" else (args.strategy,)
    cache_dir = Path(args.cache_dir or os.environ.get("TRANSFER_SEARCH_CACHE")
                     or Path.home() / ".cache" / "transfer-search").expanduser().resolve()
    return ExperimentSpec(
        strategies=strategies, data=args.data, backbone=args.backbone, samples=args.samples,
        max_epochs=args.max_epochs, grace_period=min(args.grace_period, args.max_epochs),
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        address=args.address, storage=storage, name=name, seed=args.seed, weights=args.weights,
        image_size=args.image_size, pretrain_epochs=args.pretrain_epochs,
        split=parse_split(args.split), cache_dir=cache_dir, pretrained=args.pretrained,
        pretrain_data=args.pretrain_data, pretext_init=args.pretext_init,
        pretext_decoder_epochs=args.pretext_decoder_epochs,
    )


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
