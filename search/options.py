"""The command line of search/run.py: every option, its default and its help, in groups.

    python search/run.py --help

Only light modules are imported here, so `--help` and input errors answer without loading
torch. The options are parsed and checked into an `ExperimentSpec` by search.spec.
"""

from __future__ import annotations

import argparse
import re

from trainables.strategies import STRATEGIES

# the U-Net colorization study's phases: the decoder at lr 0.01, at 0.001, then the whole net
THREE_PHASE = "decoder@0.01,decoder@0.001,all@0.001"

SEARCHERS = ("tpe", "random", "cmaes", "qmc", "gp")
SCHEDULERS = ("asha", "hyperband", "median", "pbt", "fifo")
OBJECTIVES = ("acc", "acc+time")
DEFAULT_SAMPLES = 8  # trials per strategy without --samples or --time-budget

# --grace-period (epochs) and --reduction-factor where not given, per scheduler. ASHA's are Ray
# Tune's own (a first rung after 1 epoch, a quarter going on): in bench/search_quality.py they
# spent fewer trial-epochs than a grace of 2 and halving, and kept the same best trials. The
# median rule waits for epoch-2 results (one epoch is a noisy signal to stop on), and PBT's
# interval stays 2 epochs, so a copied checkpoint trains a while before it is judged again.
SCHEDULER_DEFAULTS = {"asha": (1, 4), "hyperband": (1, 2), "median": (2, 2), "pbt": (2, 2),
                      "fifo": (1, 4)}

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

  # two strategies on your own ImageFolder tree at 64 px, with a bigger budget
  python search/run.py --strategy frozen,unfrozen --data ~/photos --image-size 64 \\
      --samples 24 --max-epochs 12 --name photos

  # as many trials as fit in half an hour, 15 minutes per strategy
  python search/run.py --strategy frozen,unfrozen --time-budget 30m

  # your own ranges, checked and printed without running anything
  python search/run.py --strategy unfrozen --space my_space.yaml --show-space

  # continue an interrupted search (Ctrl-C, a crash, a lost machine)
  python search/run.py --resume photos

  # join a running Ray cluster, a quarter of a GPU per trial, a shared PostgreSQL study
  python search/run.py --strategy frozen --data torchvision:CIFAR10 --address auto \\
      --gpus-per-trial 0.25 --optuna-storage postgresql://user@db-host/studies

The same command runs as `transfer-search ...` and `python -m search ...`.
"""


class UsageError(ValueError):
    """Bad command-line input; run.py prints the message and exits with code 2."""


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes a value that starts with "-" for a value only when it is a number, so
        # `--time-budget -5m` would fail as "expected one argument", without saying what is
        # wrong with the value; a signed duration is a value too, checked like any other
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)[smh]?$")

    def error(self, message: str):  # one line, exit code 2, no usage dump
        raise UsageError(f"{message} (see --help)")


def build_parser(prog: str = "run.py") -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_options(p.add_argument_group("data"))
    add_strategy_options(p.add_argument_group("strategies and weights"))
    add_search_options(p.add_argument_group("search"))
    add_space_options(p.add_argument_group("search space"))
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
    g.add_argument("--strategy", default=None, metavar="NAME[,NAME...]|all",
                   help=f"the strategies to search, each with the same budget: one or more of "
                   f"{', '.join(STRATEGIES)}, comma-separated, or all (required; or from "
                   "--config)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="a best/<strategy>.yaml exported by an earlier search: train exactly "
                   "that config once, without a search; flags given too override its settings "
                   "(default: none, search)")
    g.add_argument("--backbone", default="resnet18", metavar="NAME[,NAME...]",
                   help="any timm model name: resnet50, vgg16, efficientnet_b0, "
                   "convnext_tiny, vit_tiny_patch16_224, ...; several, comma-separated, are "
                   "searched as a dimension of every strategy, each pretraining stage run once "
                   "per backbone (default: %(default)s)")
    g.add_argument("--pretrained", default=None, metavar="STAGE[,STRATEGY=STAGE...]",
                   help="where weights come from, a stage of none, imagenet, supervised, "
                   "colorization: a bare STAGE applies to the strategies that start from "
                   "imagenet; STRATEGY=STAGE to one strategy, e.g. colorization=supervised "
                   "(default: per strategy: scratch none, colorization its pretext stage, the "
                   "others imagenet, or supervised on the demo)")
    g.add_argument("--pretrain-data", default=None, metavar="DATA",
                   help="the labeled source set of the supervised stage: ImageFolder, "
                   "torchvision:NAME or demo (default: the demo's own source classes)")
    g.add_argument("--pretext-data", default=None, metavar="DATA",
                   help="the unlabeled images of the colorization stage: any image folder, "
                   "also flat, or a dataset name as for --data (default: the target's training "
                   "images)")
    g.add_argument("--pretrain-epochs", type=int, default=10, metavar="N",
                   help="epochs of a pretraining stage (default: %(default)s)")
    g.add_argument("--pretext-init", choices=("scratch", "imagenet"), default="scratch",
                   help="how the colorization encoder starts (default: %(default)s)")
    g.add_argument("--pretext-decoder-epochs", type=int, default=0, metavar="N",
                   help="colorization: the first N pretraining epochs train the decoder "
                   "alone, the encoder frozen (default: %(default)s)")
    g.add_argument("--pretrain-patience", type=int, default=6, metavar="N",
                   help="a pretraining stage stops once its held-out metric (the source's val "
                   "accuracy, colorization's ab error) has not improved for N epochs, and "
                   "hands on its best epoch's weights; 0: no early stopping, every epoch, the "
                   "last kept (default: %(default)s)")
    g.add_argument("--pretext-loss", choices=("l1", "classification"), default="l1",
                   help="colorization: L1 regression of ab, or Zhang et al.'s classification "
                   "over quantised ab bins with class rebalancing (default: %(default)s)")
    g.add_argument("--pretext-schedule", default=None, metavar="PHASE[,PHASE...]",
                   help="colorization: phases, each decoder@LR (the decoder alone) or all@LR "
                   "(the whole net), each up to --pretrain-epochs with early stopping and from "
                   "the best weights of the one before; three-phase is "
                   f"{THREE_PHASE} (default: none, --pretext-decoder-epochs' two)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="a local backbone checkpoint (.pt, .pth, .safetensors) for every "
                   "pretrained strategy, instead of its stage (default: none)")


def add_search_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--samples", type=int, default=None, metavar="N",
                   help="trials per strategy; with --time-budget, at most N, whichever ends "
                   f"first (default: {DEFAULT_SAMPLES}; with --time-budget, as many as fit, "
                   "except for pbt, whose population is fixed)")
    g.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall-clock time of the trials, split equally between the strategies, "
                   "each strategy's Tuner stopped once its share is spent; 600 (seconds), 90s, "
                   "10m or 1.5h, counted from each strategy's first trial; --resume keeps the "
                   "time left; data, Ray's start, pretraining and --final-eval come on top "
                   "(default: none, --samples trials)")
    g.add_argument("--no-preset", action="store_true",
                   help="do not try each strategy's preset first (a published recipe for its "
                   "kind of training, shown by --show-space); the sampler picks every trial "
                   "(default: the preset is the first trial)")
    g.add_argument("--max-epochs", type=int, default=6, metavar="N",
                   help="epoch budget of one trial (default: %(default)s)")
    g.add_argument("--searcher", choices=SEARCHERS, default="tpe",
                   help="Optuna's sampler: tpe (multivariate, grouped; its first "
                   "max(3, samples // 3) trials are random), random, cmaes, qmc (Sobol) or gp; "
                   "every one is seeded by --seed (default: %(default)s)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                   help="how trials are stopped early: asha, hyperband, median (stopping "
                   "rule), pbt (population-based training of lr and weight decay) or fifo "
                   "(none) (default: %(default)s)")
    g.add_argument("--grace-period", type=int, default=None, metavar="N",
                   help="epochs every trial runs before the scheduler may stop it: ASHA's "
                   "first rung, the median rule's grace, PBT's perturbation interval "
                   "(default: 1 for asha, 2 for median and pbt)")
    g.add_argument("--reduction-factor", type=int, default=None, metavar="N",
                   help="asha, hyperband: 1/N of the trials at a rung go on to the next, N "
                   "times as many epochs on (default: 4 for asha, 2 for hyperband)")
    g.add_argument("--objective", choices=OBJECTIVES, default="acc",
                   help="what the study optimises: acc (the best epoch's val_acc), or acc+time "
                   "(val_acc and the trial's training time at its full budget, a Pareto "
                   "front); schedulers always rank by val_acc (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seeds the sampler, the trials, the pretraining stages, the data split "
                   "and the demo's images (default: %(default)s)")
    g.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help="times a failed trial is restarted from its last checkpoint before it "
                   "counts as errored (default: %(default)s)")
    g.add_argument("--final-eval", type=int, default=0, metavar="SEEDS",
                   help="after the search, retrain each strategy's best config SEEDS times and "
                   "report test accuracy (search/evaluate.py) (default: 0, no test evaluation)")
    g.add_argument("--resume", default=None, metavar="NAME",
                   help="continue the interrupted experiment NAME under --storage, with its own "
                   "settings: finished strategies are kept, the interrupted one continues "
                   "from its trials' checkpoints and its study (default: a new experiment)")
    g.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="where the studies live, for several drivers or a dashboard: "
                   "postgresql://..., mysql://..., sqlite:///PATH or journal:PATH (default: "
                   "sqlite in the experiment directory)")


def add_space_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--space", default=None, metavar="FILE.yaml",
                   help="override any strategy's dimensions: ranges (log or not), integers, "
                   "choices or fixed values; --show-space prints the format (default: the "
                   "built-in spaces)")
    g.add_argument("--show-space", action="store_true",
                   help="print the effective space of each strategy, as a --space file, and "
                   "exit (default: search)")
    g.add_argument("--warm-start", default=None, metavar="FILE",
                   help="a best/<strategy>.yaml or a leaderboard.csv from an earlier search: "
                   "its configs are the first trials (default: none)")


def add_resource_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N",
                   help="CPU cores per trial and per pretraining task; also its torch threads "
                   "(default: %(default)s)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N",
                   help="GPUs per trial: 1, or a fraction 1/k (0.5, 0.25, ...) that packs k "
                   "trials onto one GPU, each held to its share of the GPU's memory "
                   "(default: %(default)s)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each trial's network before its first epoch; the "
                   "compile time is reported apart as compile_s (default: eager)")
    g.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="at most N trials run at once (default: as many as the resources "
                   "allow)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="a Ray cluster to join: auto for the one `ray up` started, or "
                   "HOST:PORT (default: start a local Ray instance)")
    g.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                   help="where the local Ray instance's dashboard listens; anything but "
                   "loopback exposes it to the network, and prints a warning (default: "
                   "%(default)s)")
    g.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                   help="start the local Ray instance's dashboard; --no-dashboard saves its "
                   "processes, about 4 s of CPU per start, where nobody watches (default: on)")


def add_output_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--storage", default="experiments", metavar="DIR|URI",
                   help="where experiments go: a folder (on a cluster, one every node mounts), "
                   "or s3://bucket/prefix, gs://... (default: ./%(default)s)")
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
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_const", const="quiet", dest="verbosity",
                      default="normal", help="print only each trial's end and the results "
                      "(default: a compact progress table)")
    loud.add_argument("--verbose", action="store_const", const="verbose", dest="verbosity",
                      help="Ray Tune's own full progress output instead of the compact table "
                      "(default: the compact table)")


def with_scheduler_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with --grace-period and --reduction-factor filled in for its --scheduler."""
    grace, factor = SCHEDULER_DEFAULTS[args.scheduler]
    given = vars(args)
    return argparse.Namespace(**{
        **given, "grace_period": grace if args.grace_period is None else args.grace_period,
        "reduction_factor": factor if args.reduction_factor is None else args.reduction_factor})
