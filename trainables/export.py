"""A trained model as files a user can keep: safetensors weights plus a JSON of what they mean.

model.json holds everything needed to rebuild and feed the model (backbone, head, classes, image
size and the normaliser's mean and std), so search/predict.py preprocesses an image exactly as
training did: decode, RGB, shorter side to `image_size`, centre crop, normalise.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from store.atomic import atomic_dir
from trainables.config import TrialConfig
from trainables.models import Normalize, build_model, normalizer

WEIGHTS_FILE, META_FILE = "model.safetensors", "model.json"
FORMAT = 1


def save_model(directory: Path, model: nn.Module, *, backbone: str, hp: TrialConfig,
               classes: tuple[str, ...], image_size: int, extra: dict) -> Path:
    """Write model.safetensors and model.json into `directory` as one atomic entry."""
    norm = normalizer(model)
    meta = {
        "format": FORMAT, "backbone": backbone, "classes": list(classes),
        "image_size": image_size,
        "normalize": {"mean": (norm.mean.flatten() / 255).tolist(),
                      "std": (norm.std.flatten() / 255).tolist(), "input": "uint8 RGB"},
        "head": {"head": hp.head, "hidden": hp.head_hidden, "dropout": hp.head_dropout,
                 "batch_norm": hp.head_bn},
        **extra,
    }
    # safetensors refuses shared or non-contiguous storage; a state dict of clones has neither
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(directory, replace=True) as tmp:  # a re-evaluation's model wins
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_model(directory: str | Path) -> tuple[nn.Module, Normalize, dict]:
    """(model in eval mode, its normaliser, model.json); loads no pickle, so runs no code."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory}: model format {meta.get('format')}, expected {FORMAT}")
    head = meta["head"]
    model = build_model(meta["backbone"], len(meta["classes"]), head["head"],
                        hidden=head["hidden"], dropout=head["dropout"],
                        batch_norm=head["batch_norm"])
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    norm = Normalize(tuple(meta["normalize"]["mean"]), tuple(meta["normalize"]["std"]))
    return model.eval(), norm, meta

