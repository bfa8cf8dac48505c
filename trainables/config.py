"""The two configs a trial sees: run settings (fixed for an experiment) and sampled hyperparameters,
and the names their fields take.

Run settings travel to trials through `tune.with_parameters`, never through `param_space`, so the
search space holds only what Optuna samples. `TrialConfig.from_dict` rejects unknown keys, so a
space that suggests a misspelled name fails the first trial loudly instead of being ignored.
A TrialConfig is named `hp` wherever it is passed; `config` is Ray Tune's dict it is read from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# crop_flip is CIFAR's pad-and-crop, for small images; rrc is Inception's random-resized crop,
# the standard for natural images of 64 px and more (both with a horizontal flip)
AUGMENTATIONS = ("none", "flip", "crop_flip", "rrc", "trivialaugment", "randaugment")
MIXES = ("none", "mixup", "cutmix")  # timm's Mixup: mixed images, soft targets
HEADS = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")
# Pretraining stages, where a backbone's starting weights come from (trainables.pretrain).
STAGES = ("none", "imagenet", "supervised", "colorization")


@dataclass(frozen=True)
class RunSettings:
    strategy: str
    backbone: str
    max_epochs: int
    seed: int
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # the trial's share of a GPU: how much data stays resident
    compile: bool = False  # torch.compile the trained network (trainables/compiled.py)

    def for_trial(self, hp: TrialConfig) -> RunSettings:
        """The settings a trial trains with: the backbone its config names, where the search
        samples one (--backbone A,B), else the run's."""
        return replace(self, backbone=hp.backbone) if hp.backbone else self


@dataclass(frozen=True)
class TrialConfig:
    lr: float
    batch_size: int
    augment: str
    weight_decay: float
    optimizer: str = "sgd"  # SGD with Nesterov momentum 0.9, or AdamW
    label_smoothing: float = 0.0
    lr_mult: float = 1.0  # backbone lr = lr * lr_mult (unfrozen, colorization, partial, lp_ft)
    head: str = "linear"  # frozen: a linear probe, or a small MLP head
    head_hidden: int = 256  # MLP head: hidden units, dropout, BatchNorm between its layers
    head_dropout: float = 0.0
    head_bn: bool = False
    magnitude: int = 9  # RandAugment's magnitude bin, 0 to 30 (searched when augment=randaugment)
    freeze_depth: int = 0  # partial, colorization: backbone blocks kept frozen, from the stem on
    probe_epochs: int = 1  # lp_ft: linear-probe epochs before full fine-tuning
    crop_scale: float = 0.08  # rrc: the smallest crop, as a fraction of the image's area
    mix: str = "none"  # mixup or cutmix of the batch, with soft targets
    mix_alpha: float = 0.2  # the Beta(alpha, alpha) the mixing ratio is drawn from
    ema_decay: float = 0.0  # an EMA of the weights (0: none), evaluated and kept instead
    warmup: float = 0.1  # the lr's linear warmup, as a fraction of the whole schedule
    backbone: str = ""  # the timm backbone, where the search samples one; "": the run's

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment={self.augment!r}: expected one of {AUGMENTATIONS}")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: expected one of {HEADS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: expected one of {OPTIMIZERS}")
        if self.mix not in MIXES:
            raise ValueError(f"mix={self.mix!r}: expected one of {MIXES}")
        if (self.lr <= 0 or self.batch_size < 1 or self.weight_decay < 0 or self.lr_mult <= 0
                or not 0 <= self.magnitude <= 30 or not 0 <= self.label_smoothing < 1
                or not 0 <= self.head_dropout < 1 or self.head_hidden < 1
                or self.freeze_depth < 0 or self.probe_epochs < 0
                or not 0 < self.crop_scale <= 1 or self.mix_alpha <= 0
                or not 0 <= self.ema_decay < 1 or not 0 <= self.warmup < 1):
            raise ValueError(f"out-of-range hyperparameters: {self}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trial config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
