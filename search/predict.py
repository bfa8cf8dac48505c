"""Classify images with a model the final evaluation kept.

    python search/predict.py experiments/NAME/eval/model/unfrozen photo1.jpg photo2.png

An experiment directory stands for its winner's kept model (`find_model`, which
search/export.py shares). Prints one line per image: its path, the predicted class and its
probability. Images get the training's own preprocessing (RGB, shorter side to the model's image
size, centre crop, the backbone's normalisation). A file that cannot be read gets an error line
and the others are still predicted; the exit code is 1 if any image failed, 2 if the model
folder is unusable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_MODEL, EXIT_SOME_FAILED = 2, 1
MODEL_FILES = ("model.json", "model.safetensors")  # trainables/export.py's, read without torch
KEPT = "pass a folder the final evaluation wrote, e.g. experiments/NAME/eval/model/STRATEGY"


class NoModel(ValueError):
    """A path that is neither a kept model nor an experiment with one; str() names the fix."""


def is_model(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MODEL_FILES)


def find_model(path: str | Path) -> Path:
    """The model folder `path` names: itself, or in an experiment directory the kept model of
    its winner, the leaderboard's first strategy (by validation, as evaluate.py picks it) among
    those kept (--keep-all keeps several)."""
    import csv

    from store.layout import LEADERBOARD_FILE, MODEL_DIR, is_experiment

    path = Path(path)
    if not path.is_dir():
        raise NoModel(f"{path}: no such folder; {KEPT}, or an experiment directory")
    if is_model(path):
        return path
    if not is_experiment(path):
        missing = " or ".join(n for n in MODEL_FILES if not (path / n).is_file())
        raise NoModel(f"{path}: not a model (no {missing}) nor an experiment directory; {KEPT}")
    root = path / MODEL_DIR
    # a dot: atomic_dir's temporary folder of a model still being written
    kept = {p.name: p for p in sorted(root.iterdir()) if is_model(p)
            and not p.name.startswith(".")} if root.is_dir() else {}
    if not kept:
        raise NoModel(f"{path}: the experiment kept no model in {MODEL_DIR}/; run "
                      f"`python search/evaluate.py {path}` first (it keeps the winner's)")
    board = path / LEADERBOARD_FILE
    if board.is_file():
        with board.open(newline="") as rows:
            ranked = [row.get("strategy") for row in csv.DictReader(rows)]
        winner = next((kept[s] for s in ranked if s in kept), None)
        if winner is not None:
            return winner
    if len(kept) == 1:
        return next(iter(kept.values()))
    raise NoModel(f"{path}: {len(kept)} kept models and no leaderboard to rank them; pass one "
                  f"of {', '.join(str(p) for p in kept.values())}")


def local_model(model: str, into: Path | None = None) -> Path:
    """The model's folder here: itself, or its two files downloaded from a URI into `into`
    (else a new temporary folder). Light, as the rest of this module, so that search/serve.py
    answers a URI with no model there before it imports Ray Serve and torch."""
    import shutil
    import tempfile

    from store.uri import is_uri, join_uri, open_uri

    if not is_uri(model):
        return Path(model)
    local = into or Path(tempfile.mkdtemp(prefix="transfer-search-model-"))
    for name in MODEL_FILES:
        fs, path = open_uri(join_uri(model, name))
        try:
            with fs.open_input_stream(path) as src, (local / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except FileNotFoundError:
            raise FileNotFoundError(f"{model}: no {name} there; pass the URI of a kept model "
                                    "folder, .../eval/model/STRATEGY") from None
    return local


def predict_files(model_dir: Path, paths: list[str], batch_size: int = 64
                  ) -> list[tuple[str, str | None, float | None, str | None]]:
    """(path, class, probability, error) per image, in the order given."""
    import numpy as np
    import torch

    from trainables.data.imagefolder import decode
    from trainables.device import pick_device
    from trainables.export import load_model
    from trainables.loop import predict

    model, norm, meta = load_model(model_dir)
    device = pick_device()
    model, norm = model.to(device), norm.to(device)
    arrays, results = {}, {}
    for path in paths:
        if not Path(path).is_file():
            results[path] = (path, None, None, "no such file")
            continue
        array = decode(path, meta["image_size"])
        if array is None:
            results[path] = (path, None, None, "not a readable image")
        else:
            arrays[path] = array
    readable = list(arrays)
    for begin in range(0, len(readable), batch_size):
        chunk = readable[begin : begin + batch_size]
        images = torch.from_numpy(np.stack([arrays[p] for p in chunk]))
        probs, _ = predict(model, images, normalize=norm, device=device)
        best = probs.max(1)
        for path, p, k in zip(chunk, best.values.tolist(), best.indices.tolist(), strict=True):
            results[path] = (path, meta["classes"][k], p, None)
    return [results[p] for p in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a folder with model.safetensors and model.json (eval/model/S), "
                        "or an experiment directory: its winner's")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    args = parser.parse_args(argv)
    try:
        model_dir = find_model(args.model_dir)
    except NoModel as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_MODEL
    try:
        rows = predict_files(model_dir, args.images)
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        print(f"predict.py: error: {model_dir}: cannot load the model ({error})",
              file=sys.stderr)
        return EXIT_BAD_MODEL
    failed = 0
    for path, label, prob, error in rows:
        if error:
            failed += 1
            print(f"{path}\terror: {error}", file=sys.stderr)
        else:
            print(f"{path}\t{label}\t{prob:.4f}")
    return EXIT_SOME_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
