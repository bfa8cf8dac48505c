"""Checks of the command line's values, each raising a UsageError that names the fix.

Light imports only (no torch, Ray or Optuna), so bad input answers at once. search.spec calls
these while it builds the ExperimentSpec.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from search.options import UsageError
from trainables.config import STAGES
from trainables.data.dataset import DataError
from trainables.data.demo import demo_size
from trainables.strategies import STRATEGIES


def parse_strategies(text: str | None) -> tuple[str, ...]:
    """--strategy: `all`, or names separated by commas, each registered, in the given order."""
    if text is None:
        raise UsageError("--strategy is required (or --config FILE from an earlier search)")
    if text == "all":
        return tuple(STRATEGIES)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    for name in names:
        if name not in STRATEGIES:
            close = difflib.get_close_matches(name, STRATEGIES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"--strategy: invalid choice: {name!r} (choose from "
                             f"{', '.join(STRATEGIES)}, or all){hint}")
    return names


def parse_pretrained(text: str | None, strategies: tuple[str, ...]) -> dict[str, str]:
    """--pretrained: the stage of each strategy whose weights it changes.

    A bare stage applies to the strategies that default to imagenet, so colorization keeps its
    pretext stage and scratch its random start; STRATEGY=STAGE sets one strategy's stage."""
    if not text:
        return {}
    chosen: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        strategy, _, stage = part.rpartition("=")
        if stage not in STAGES:
            raise UsageError(f"--pretrained {text}: unknown stage {stage!r}; choose from "
                             f"{', '.join(STAGES)}, as STAGE or STRATEGY=STAGE")
        if strategy and strategy not in STRATEGIES:
            raise UsageError(f"--pretrained {text}: unknown strategy {strategy!r}; choose from "
                             f"{', '.join(STRATEGIES)}")
        if strategy and STRATEGIES[strategy].pretrained == "none" and stage != "none":
            raise UsageError(f"--pretrained {text}: {strategy} always starts from random "
                             "weights; search unfrozen for pretrained weights")
        targets = [strategy] if strategy else [
            s for s in strategies if STRATEGIES[s].pretrained == "imagenet"]
        reached = [s for s in targets if s in strategies]
        if not reached:
            whom = strategy or "the strategies that start from imagenet"
            raise UsageError(f"--pretrained {text}: {part} reaches none of "
                             f"{', '.join(strategies)} ({whom}); use STRATEGY=STAGE for one of "
                             "them, or drop it")
        chosen.update(dict.fromkeys(reached, stage))
    return chosen


def stage_kind(pretrained: dict[str, str], strategy: str, is_demo: bool) -> str:
    """The stage a strategy's weights come from: --pretrained for it, else its default; on the
    demo, a default `imagenet` means the demo's own supervised pretraining (offline)."""
    kind = pretrained.get(strategy, STRATEGIES[strategy].pretrained)
    if kind == "imagenet" and strategy not in pretrained and is_demo:
        return "supervised"
    return kind


def check_data(args: argparse.Namespace) -> bool:
    """The --data and --weights paths exist; returns whether --data is the demo."""
    try:
        is_demo = demo_size(args.data) is not None
    except DataError as error:
        raise UsageError(str(error)) from None
    is_path = not is_demo and not args.data.startswith("torchvision:")
    if is_path and not Path(args.data).expanduser().exists():
        raise UsageError(f"--data {args.data}: no such file or directory")
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    return is_demo


def check_search(args: argparse.Namespace) -> None:
    """Sampler, scheduler and objective fit together."""
    if args.reduction_factor < 2:
        raise UsageError(f"--reduction-factor {args.reduction_factor}: must be at least 2")
    if args.objective != "acc" and args.searcher in ("cmaes",):
        raise UsageError(f"--objective {args.objective} needs a multi-objective sampler; "
                         f"--searcher {args.searcher} has one objective (use tpe, random, qmc "
                         "or gp)")
    if args.scheduler == "pbt" and args.objective != "acc":
        raise UsageError("--scheduler pbt has no study to hold a Pareto front (its configs change "
                         "during a trial); use --objective acc, or another scheduler")
    if args.scheduler == "pbt" and args.grace_period >= args.max_epochs:
        raise UsageError(f"--scheduler pbt perturbs every --grace-period epochs "
                         f"({args.grace_period}); --max-epochs {args.max_epochs} leaves no "
                         "room for a perturbation: raise --max-epochs or lower --grace-period")
    if args.scheduler == "pbt" and args.samples < 2:
        raise UsageError("--scheduler pbt needs a population: --samples 2 or more")


MAX_IMAGE_SIZE = 1024


def check_numbers(args: argparse.Namespace) -> None:
    samples = 1 if args.samples is None else args.samples  # None: as many as fit in the time
    for flag, value, low in [("--samples", samples, 1), ("--max-epochs", args.max_epochs, 1),
                             ("--grace-period", args.grace_period, 1),
                             ("--image-size", args.image_size, 8),
                             ("--pretrain-epochs", args.pretrain_epochs, 1),
                             ("--max-failures", args.max_failures, 0),
                             ("--final-eval", args.final_eval, 0),
                             ("--max-concurrent",
                              1 if args.max_concurrent is None else args.max_concurrent, 1)]:
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if not 0 <= args.seed < 2**32:  # numpy's and Optuna's seeds are unsigned 32-bit
        raise UsageError(f"--seed {args.seed}: must be between 0 and {2**32 - 1}")
    if args.image_size > MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size {args.image_size}: must be at most {MAX_IMAGE_SIZE} "
                         "(images are held decoded, N x 3 x PX x PX bytes)")
    if not math.isfinite(args.cpus_per_trial) or args.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial:g}: must be a number above 0")
    check_gpus(args.gpus_per_trial)


def parse_backbones(text: str) -> tuple[str, ...]:
    """--backbone's comma-separated names, none empty and none twice (check_backbones then
    asks timm for each)."""
    names = tuple(name.strip() for name in text.split(","))
    if "" in names:
        raise UsageError(f"--backbone {text}: an empty name; separate timm model names with "
                         "single commas, e.g. resnet18,resnet50d")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--backbone {text}: {', '.join(twice)} given twice; name each "
                         "backbone once")
    return names


def check_backbones(names: tuple[str, ...]) -> None:
    """Each name is a timm model; else the closest names."""
    import timm  # loads torch: seconds, so only once the cheaper checks have passed

    for name in names:
        if not timm.is_model(name.split(".")[0]):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise UsageError(f"--backbone {name}: not a timm model{hint}")


def check_space_backbones(path: str, overrides: dict, backbones: tuple[str, ...]) -> None:
    """A --space file's backbone narrows --backbone's list: only where it lists several, and
    only to names in it (a trial gets stage weights for those alone)."""
    from spaces.dims import Choices, Fixed

    for dims in overrides.values():
        dim = dims.get("backbone")
        if dim is None:
            continue
        if len(backbones) < 2:
            raise UsageError(f"--space {path}: sets backbone, which a run searches only over "
                             "several --backbone names; list them, e.g. --backbone "
                             "resnet18,resnet50d, or drop it from the file")
        given = dim.choices if isinstance(dim, Choices) else (dim.value,) \
            if isinstance(dim, Fixed) else ()
        unknown = sorted(set(given) - set(backbones))
        if unknown:
            raise UsageError(f"--space {path}: backbone {', '.join(unknown)} is not among "
                             f"--backbone {','.join(backbones)}; add it there or drop it from "
                             "the file")


DURATION = re.compile(r"(-?(?:\d+\.?\d*|\.\d+))([smh]?)")
UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None, flag: str = "--time-budget") -> float | None:
    """A duration in seconds: 600 (seconds), 90s, 10m or 1.5h; None stays None."""
    if text is None:
        return None
    found = DURATION.fullmatch(text.strip())
    if not found:
        raise UsageError(f"{flag} {text}: not a duration; give seconds (600) or a number with "
                         "s, m or h (90s, 10m, 1.5h)")
    seconds = float(found.group(1)) * UNIT_S[found.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"{flag} {text}: must be above 0; give e.g. 90s, 10m or 1.5h")
    return seconds


def check_gpus(gpus: float) -> None:
    """0, 1, or 1/k of a GPU: Ray packs k such trials onto a GPU, and a share like 0.3 would
    leave a tenth of every GPU idle. More than one is refused: a trial trains on one device
    (there is no data-parallel training), so its other GPUs would sit idle, held."""
    if not math.isfinite(gpus) or gpus < 0:
        raise UsageError(f"--gpus-per-trial {gpus:g}: must be a number, 0 or more")
    if gpus > 1:
        raise UsageError(f"--gpus-per-trial {gpus:g}: a trial trains on one GPU (there is no "
                         "data-parallel training), so the others would sit idle; give 1, and "
                         "the search runs one trial per GPU side by side")
    k = round(1 / gpus) if 0 < gpus < 1 else 0
    share = k > 0 and abs(gpus * k - 1) < 1e-3  # 0.33 or 0.333 for a third
    if gpus and not (gpus == 1 or share):
        raise UsageError(f"--gpus-per-trial {gpus:g}: use 1, or a fraction 1/k such as 0.5 "
                         f"or 0.25 (e.g. {1 / max(k, 1):.4g})")


def parse_keep(text: str) -> int | None:
    """--keep-checkpoints: a number of trials per strategy, or all (None)."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--keep-checkpoints {text}: expected a number of trials (1 or more) "
                         "or all")
    return int(text)


def check_pretraining(args: argparse.Namespace, is_demo: bool, pretrained: dict[str, str],
                      strategies: tuple[str, ...]) -> None:
    """Every stage has its data, and every stage's data flag is used by some strategy."""
    kinds = {stage_kind(pretrained, s, is_demo) for s in strategies}
    if args.weights:
        kinds = {"none"} if kinds <= {"none"} else {"file"}
    named = ", ".join(strategies)
    if "supervised" in kinds and not is_demo and not args.pretrain_data:
        raise UsageError("--pretrained supervised needs --pretrain-data (a labeled source set) "
                         "unless --data is the demo, which has its own source classes")
    if args.pretrain_data and "supervised" not in kinds:
        raise UsageError(f"--pretrain-data is the supervised stage's labeled source, and none of "
                         f"{named} starts from it; add --pretrained supervised, or use "
                         "--pretext-data for colorization's unlabeled images")
    if args.pretext_data and "colorization" not in kinds:
        raise UsageError(f"--pretext-data is the colorization stage's images, and none of "
                         f"{named} starts from it; add colorization to --strategy or "
                         "--pretrained")
    for flag, value in (("--pretrain-data", args.pretrain_data),
                        ("--pretext-data", args.pretext_data)):
        if value and not value.startswith(("demo", "torchvision:")) \
                and not Path(value).expanduser().is_dir():
            raise UsageError(f"{flag} {value}: no such directory")
    colorization_flags = [flag for flag, given in (
        ("--pretext-loss", args.pretext_loss != "l1"),
        ("--pretext-schedule", args.pretext_schedule)) if given]
    if colorization_flags and "colorization" not in kinds:
        raise UsageError(f"{colorization_flags[0]} sets the colorization stage, and none of "
                         f"{named} starts from it; add colorization to --strategy or "
                         "--pretrained")
    if args.pretrain_patience < 0:
        raise UsageError(f"--pretrain-patience {args.pretrain_patience}: must be 0 (never stop "
                         "early) or more")
    if args.pretext_schedule and args.pretext_decoder_epochs:
        raise UsageError("--pretext-schedule and --pretext-decoder-epochs both set the "
                         "colorization stage's phases; give one (a decoder@LR phase trains the "
                         "decoder alone)")
    parse_schedule(args.pretext_schedule)
    if not 0 <= args.pretext_decoder_epochs <= args.pretrain_epochs:
        raise UsageError(f"--pretext-decoder-epochs {args.pretext_decoder_epochs}: must be "
                         f"between 0 and --pretrain-epochs ({args.pretrain_epochs})")


def parse_schedule(text: str | None) -> tuple[tuple[str, float], ...]:
    """--pretext-schedule as (what trains, Adam's lr) per phase; () when not given."""
    from search.options import THREE_PHASE

    if not text:
        return ()
    phases = []
    for part in (THREE_PHASE if text == "three-phase" else text).split(","):
        trains, _, lr = part.strip().partition("@")
        try:
            rate = float(lr)
        except ValueError:
            rate = -1.0
        if trains not in ("decoder", "all") or not rate > 0:
            raise UsageError(f"--pretext-schedule {text}: {part.strip()!r} is not a phase; "
                             "give decoder@LR or all@LR, comma-separated (e.g. "
                             f"{THREE_PHASE}), or three-phase")
        phases.append((trains, rate))
    return tuple(phases)


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


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists: where a folder not yet made would be."""
    while not path.exists():
        path = path.parent
    return path


def check_storage_folder(storage: Path) -> None:
    """--storage is a folder this process can write in, or can create: a file is written and
    removed in its nearest existing folder (permission bits say nothing to root, nor about a
    read-only mount)."""
    existing = nearest_existing(storage)
    if not existing.is_dir():
        raise UsageError(f"--storage {storage}: {existing} is a file, not a folder; choose a "
                         "folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".transfer-search-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(f"--storage {storage}: cannot write in {existing} ({error.strerror}); "
                         "choose a folder you can write to") from None


def check_free_space(storage: Path, checkpoint_bytes: int, backbone: str) -> None:
    """Room for one trial's checkpoints: Tune keeps its best and latest and writes the next
    beside them, so three, plus a margin for the results."""
    existing = nearest_existing(storage)
    needed = 3 * checkpoint_bytes + (16 << 20)
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UsageError(f"--storage {storage}: {free / 1e6:.1f} MB free, and one trial of "
                         f"{backbone} needs about {needed / 1e6:.0f} MB for its checkpoints "
                         f"({checkpoint_bytes / 1e6:.0f} MB each, three at a time; more for "
                         "trials running side by side); free some space or choose another "
                         "--storage")


ADDRESS_TIMEOUT_S = 5.0


def check_address(address: str | None) -> None:
    """--address HOST:PORT accepts a connection within seconds: Ray's own connect retries for a
    minute or more before it gives up. `auto` is checked by Ray at once."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected auto, or HOST:PORT of a Ray head node "
                         "(its GCS port, 6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), ADDRESS_TIMEOUT_S).close()
    except OSError as error:
        raise UsageError(f"--address {address}: cannot reach a Ray cluster there "
                         f"({error.strerror or error or 'timed out'} after at most "
                         f"{ADDRESS_TIMEOUT_S:.0f} s); check that `ray start --head` runs on "
                         "that host and its port is open to this machine, or leave --address "
                         "out to start Ray here") from None


def check_dashboard_host(host: str) -> None:
    if host not in LOOPBACK:
        print(f"warning: --dashboard-host {host}: the Ray dashboard will accept connections "
              "from the network; anyone who reaches it can submit jobs that run code on this "
              "machine unless Ray's token auth is on (RAY_AUTH_MODE=token)", flush=True)


LOOPBACK = ("127.0.0.1", "localhost", "::1")
