"""Known-good starting points: each strategy's preset, a published recipe for its kind of
training, tried as the first trial of its search (unless --no-preset).

A recipe is written at its own batch size and scaled to one of the space's batches (the
largest, or for a schedule counted in steps the one whose epochs come nearest them) the way the
spaces scale their lr ranges (the square root of the batch's growth, batch_lr_scale),
and its crop follows the image size as the spaces' augmentation choices do. Each value lies
inside the built-in space (a test checks), so the search starts where a careful practitioner
would and TPE's random start-up trials come after it.
"""

from __future__ import annotations

import math
from typing import Any

from spaces.registry import RRC_FROM_PX, SpaceContext, batch_lr_scale


def crop(context: SpaceContext, crop_scale: float) -> dict[str, Any]:
    """The crop of a recipe: Inception's random-resized crop for natural images, CIFAR's
    pad-and-crop for small ones."""
    if context.image_size >= RRC_FROM_PX:
        return {"augment": "rrc", "crop_scale": crop_scale}
    return {"augment": "crop_flip"}


# Page's schedule: 10 epochs of CIFAR-10's 50,000 training images at batch 512
FAST_RESNET_STEPS = 10 * 50_000 // 512


def steps_batch(context: SpaceContext, steps: int) -> int:
    """The space's largest batch that still gives the run `steps` optimizer steps in its epoch
    budget, else its smallest: a recipe's schedule is a number of steps, and a few epochs of a
    small training split at a large batch are a small fraction of them. The largest where the
    training split is not known."""
    if context.train_images is None:
        return context.batch_sizes[-1]
    fits = [b for b in context.batch_sizes
            if context.max_epochs * context.train_images // b >= steps]
    return max(fits, default=context.batch_sizes[0])


def fast_resnet(context: SpaceContext) -> dict[str, Any]:
    """Training a ResNet from scratch in a few epochs: Page, "How to train your ResNet" (2018;
    DAWNBench, 94% on CIFAR-10 in 10 epochs, about 1,000 steps). SGD with Nesterov momentum at
    lr 0.4 for batch 512 (0.1 at 128), weight decay 5e-4, label smoothing 0.2, pad-and-crop
    with flips, a warmup over the first fifth of a one-cycle schedule, and an EMA of the
    weights (0.99); at the batch that comes nearest its steps (steps_batch)."""
    batch = steps_batch(context, FAST_RESNET_STEPS)
    return {"optimizer": "sgd", "lr": 0.1 * batch_lr_scale(batch),
            "weight_decay": 5e-4, "batch_size": batch, **crop(context, 0.35), "mix": "none",
            "ema_decay": 0.99, "warmup": 0.2, "label_smoothing": 0.2}


def linear_probe(context: SpaceContext) -> dict[str, Any]:
    """A linear probe on frozen features: SimCLR's linear evaluation (Chen et al. 2020,
    appendix B.5), SGD with Nesterov momentum, lr 0.1 x batch / 256, no weight decay (the
    space's least), no augmentation (so the head trains on cached features) and no warmup."""
    batch = context.batch_sizes[-1]
    return {"optimizer": "sgd", "lr": 0.1 * batch / 256, "weight_decay": 1e-6,
            "batch_size": batch, "augment": "none", "mix": "none", "ema_decay": 0.0,
            "warmup": 0.0, "label_smoothing": 0.0, "head": "linear"}


def fine_tune(context: SpaceContext) -> dict[str, Any]:
    """Fine-tuning a pretrained network: BiT-HyperRule (Kolesnikov et al., "Big Transfer",
    2020). SGD with momentum 0.9 at lr 0.003 for batch 512, no weight decay (the space's
    least), random crops with flips, a short linear warmup (500 of about 10,000 steps), no
    mixup below 20,000 training images, the backbone at the head's lr."""
    batch = context.batch_sizes[-1]
    return {"optimizer": "sgd", "lr": 0.003 * math.sqrt(batch / 512), "weight_decay": 1e-6,
            "batch_size": batch, **crop(context, 0.08), "mix": "none",
            "ema_decay": 0.0, "warmup": 0.05, "label_smoothing": 0.0, "lr_mult": 1.0}
