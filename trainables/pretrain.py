"""Pretraining stages: where a backbone's starting weights come from, computed once and cached.

- `none`: random initialisation.
- `imagenet`: timm's pretrained weights (hub download, then timm's cache), or a local file.
- `supervised`: the backbone trained on a labeled source set (the demo's own source classes).
- `colorization`: the encoder of a U-Net trained to predict ab from L on unlabeled images.

Each stage's result is a backbone state dict in timm's `num_classes=0` form, cached on disk under
a hash of (stage, backbone, source data fingerprint, stage config). `run_stage` is pure: the
caller decides where it runs (a Ray task with one trial's resources) and whether to cache its
result; `read_stage` and `write_stage` define a cache entry (weights, record, sample grid).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from store.atomic import atomic_dir
from trainables.cache import fingerprint
from trainables.colorization import train_colorization
from trainables.config import STAGES
from trainables.data.dataset import Dataset
from trainables.device import hold_to_share, pick_device
from trainables.early_stop import BestEpoch
from trainables.loop import evaluate, train_epoch
from trainables.models import (
    backbone_state,
    create_backbone,
    load_backbone_state,
    model_kwargs,
    normalizer,
)
from trainables.placement import place_inputs, resident_budget, to_device

WEIGHTS_FILE, RECORD_FILE, SAMPLES_FILE = "backbone.pt", "record.json", "samples.png"


class StageError(RuntimeError):
    """A stage cannot produce weights: the message says what to do instead."""


@dataclass(frozen=True)
class StageConfig:
    epochs: int = 10
    lr: float = 0.05  # SGD for supervised; the colorization U-Net uses Adam at lr / 50
    batch_size: int = 128
    seed: int = 0
    init: str = "scratch"  # colorization: the encoder starts from scratch or from imagenet
    decoder_epochs: int = 0  # colorization: epochs that train the decoder alone, encoder frozen
    # stop once the held-out metric has not improved for this many epochs, and keep the best
    # epoch's weights (0: every epoch, the last kept); 6 as in the U-Net colorization study
    patience: int = 6
    loss: str = "l1"  # colorization: "l1" on ab, or "classification" over ab bins
    # colorization: phases of ("decoder" or "all", Adam's lr), each up to `epochs` with early
    # stopping, each from the best weights of the one before; () for decoder_epochs' two
    schedule: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Stage:
    """One pretraining stage to run or load: its kind (one of `STAGES`) and its inputs."""

    kind: str
    backbone: str
    data_fingerprint: str  # of the images the stage trains on; "" for none and imagenet
    config: StageConfig
    weights_file: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.backbone}-{fingerprint(asdict(self))}"

    @property
    def trains(self) -> bool:
        return self.kind in ("supervised", "colorization") and self.weights_file is None


def read_stage(entry: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """A cached stage's weights and record, or None when `entry` holds none."""
    if not (entry / WEIGHTS_FILE).is_file():
        return None
    state = torch.load(entry / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    return state, json.loads((entry / RECORD_FILE).read_text())


def write_stage(entry: Path, state: dict[str, torch.Tensor], record: dict) -> None:
    """Cache a stage's weights, record and (colorization) sample grid as one entry."""
    with atomic_dir(entry) as tmp:
        torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / RECORD_FILE).write_text(json.dumps(public_record(record), indent=2))
        if "samples" in record:
            Image.fromarray(record["samples"]).save(tmp / SAMPLES_FILE)


def public_record(record: dict) -> dict:
    """The record without its arrays (the sample grid): what JSON files hold."""
    return {k: v for k, v in record.items() if not isinstance(v, np.ndarray)}


HUB_TIMEOUT_S = 3.0  # a reachable hub answers a connect in well under a second


def check_imagenet_weights(backbone: str) -> None:
    """Before anything starts: timm's pretrained weights for `backbone` are in the local hub
    cache, or the hub accepts a connection within seconds. Otherwise the download would fail
    only after the hub client's own timeouts and retries (about 45 s), inside a Ray task."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(backbone)
    hub_id = getattr(config, "hf_hub_id", None)
    if hub_id is None:
        url = getattr(config, "url", None)
        if not url:
            raise StageError(f"timm has no pretrained weights for {backbone}; pass a local "
                             "checkpoint with --weights FILE, or --pretrained none")
        endpoint = url
    else:
        files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        if any(isinstance(try_to_load_from_cache(hub_id.split("@")[0], f), str) for f in files):
            return
        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    from urllib.request import getproxies, proxy_bypass

    where = urlparse(endpoint)
    proxy = getproxies().get(where.scheme)
    if proxy and not proxy_bypass(where.hostname):  # the hub is reached through the proxy
        where = urlparse(proxy)
    port = where.port or (443 if where.scheme == "https" else 80)
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.create_connection((where.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as error:
        raise StageError(offline_message(backbone, f"{where.hostname}:{port} unreachable: "
                                                   f"{error}")) from None


def offline_message(backbone: str, reason: str) -> str:
    return (f"cannot get timm's pretrained weights for {backbone} ({reason}). Either pass a "
            "local checkpoint with --weights FILE, or run on --data demo, whose frozen and "
            "unfrozen strategies pretrain offline on the demo's own source classes.")


def imagenet_state(backbone: str, weights_file: str | None) -> dict[str, torch.Tensor]:
    """timm's pretrained weights (download + timm's cache) or a local file, classifier removed."""
    if weights_file:
        return file_state(backbone, weights_file)
    try:
        model = timm.create_model(backbone, pretrained=True, num_classes=0,
                                  **model_kwargs(backbone))
    except Exception as error:  # noqa: BLE001 - hub, network and file errors all end here
        detail = str(error).splitlines()[0] if str(error) else "no detail"
        raise StageError(offline_message(backbone, f"{type(error).__name__}: {detail}")
                         ) from None
    return backbone_state(model)


def file_state(backbone: str, weights_file: str) -> dict[str, torch.Tensor]:
    """A local checkpoint (torch with weights_only, or safetensors) as a backbone state dict."""
    path = Path(weights_file)
    if not path.is_file():
        raise StageError(f"--weights {weights_file}: no such file")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refusals, corrupt files
        # torch's refusal goes on to suggest weights_only=False, which this tool never uses
        reason = str(error).split(". ")[0].strip() or type(error).__name__
        raise StageError(f"--weights {weights_file}: cannot load ({reason}); give a state dict "
                         "saved with torch.save(model.state_dict(), FILE), or a .safetensors "
                         "file") from None
    model = create_backbone(backbone)
    classifier = timm.models.get_pretrained_cfg_value(backbone, "classifier")
    for name in (classifier,) if isinstance(classifier, str) else classifier or ():
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    try:
        load_backbone_state(model, state)
    except ValueError as error:
        raise StageError(f"--weights {weights_file}: {error}") from None
    return backbone_state(model)


def train_supervised(backbone: str, source: Dataset, config: StageConfig,
                     log: list[float] | None = None, val_log: list[float] | None = None, *,
                     outcome: dict | None = None, gpus_per_trial: float = 0.0
                     ) -> dict[str, torch.Tensor]:
    """Train the whole backbone on the labeled source set; return it without classifier.

    Appends each epoch's training loss to `log`, and its accuracy on `source.val` (held out,
    when there is one) to `val_log`: how well the stage learned, which a loss cannot say. It
    stops once that accuracy has not improved for `config.patience` epochs and returns the best
    epoch's weights; `outcome` gets that epoch and why the stage stopped. The
    stage runs with a trial's resources (`gpus_per_trial`), and keeps to a trial's rules: its
    share of the GPU's memory, and its splits resident only within a trial's budget.
    """
    torch.manual_seed(config.seed)
    device = pick_device()
    hold_to_share(device, gpus_per_trial)
    model = timm.create_model(backbone, pretrained=False, num_classes=source.num_classes,
                              **model_kwargs(backbone))
    model = model.to(device, memory_format=torch.channels_last)
    normalize = normalizer(model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    (images, val_images), _ = place_inputs([source.train.images, source.val.images], device,
                                           resident_budget(device, gpus_per_trial))
    labels = to_device(source.train.labels, device)
    val_labels = to_device(source.val.labels, device)
    generator = torch.Generator().manual_seed(config.seed)
    best, stop, epoch = BestEpoch(config.patience, higher=True), False, 0
    while epoch < config.epochs and not stop:
        epoch += 1
        model.train()
        stats = train_epoch(
            model, optimizer, images, labels, batch_size=config.batch_size, policy="crop_flip",
            normalize=normalize, loss_fn=nn.CrossEntropyLoss(), device=device,
            generator=generator)
        scheduler.step()
        if log is not None:
            log.append(stats.loss)
        if val_log is not None and len(val_labels):
            val_log.append(evaluate(model, val_images, val_labels, normalize=normalize,
                                    device=device).accuracy)
            stop = best.update(epoch, val_log[-1], model)
    best.restore(model)
    if outcome is not None:
        outcome.update(best.summary(epoch, config.epochs))
    model.reset_classifier(0)
    return backbone_state(model)


def colorization_outcome(phases: list[dict]) -> dict:
    """The stage's best epoch, counted over all its phases' epochs, and why its last phase
    stopped: the weights trials get are that epoch's."""
    done = sum(p["epochs_run"] for p in phases[:-1])
    last = phases[-1]
    return {"best_epoch": done + last["best_epoch"], "stopped": last["stopped"],
            "epochs_run": done + last["epochs_run"]}


def run_stage(stage: Stage, data: Dataset | None, threads: int = 0, gpus_per_trial: float = 0.0
              ) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """Compute a stage's backbone weights; returns (state dict or None, a record of the run).

    `data` is what the stage trains on: the labeled source set for `supervised`, the images
    (train split, labels ignored) for `colorization`. A stage that trains measures itself on
    `data.val` every epoch (`val_acc`, `val_l1`); its record also says what it trained on. It
    runs with one trial's resources: `threads` CPU threads and `gpus_per_trial` of a GPU.
    """
    if threads:
        torch.set_num_threads(threads)
    start, losses, extra = time.perf_counter(), [], {}
    if stage.kind == "none":
        state = None
    elif stage.kind == "imagenet" or stage.weights_file:
        state = imagenet_state(stage.backbone, stage.weights_file)
    elif stage.kind == "supervised":
        if data is None:
            raise StageError("supervised pretraining needs a labeled source set")
        extra["val_acc"] = []
        state = train_supervised(stage.backbone, data, stage.config, losses, extra["val_acc"],
                                 outcome=extra, gpus_per_trial=gpus_per_trial)
    elif stage.kind == "colorization":
        init = imagenet_state(stage.backbone, None) if stage.config.init == "imagenet" else None
        extra["val_l1"], extra["phases"] = [], []
        state, extra["samples"] = train_colorization(
            stage.backbone, data.train.images, stage.config, losses, init,
            val_images=data.val.images, val_log=extra["val_l1"], phases=extra["phases"],
            gpus_per_trial=gpus_per_trial)
        extra.update(colorization_outcome(extra["phases"]))
    else:
        raise StageError(f"unknown stage {stage.kind!r}; expected one of {STAGES}")
    if stage.trains:
        extra.update(epochs=stage.config.epochs, data=data.name, images=len(data.train),
                     val_images=len(data.val), patience=stage.config.patience)
    record = {"stage": stage.kind, "key": stage.key, "seconds": time.perf_counter() - start,
              "losses": losses, **extra}
    return state, record
