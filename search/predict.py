"""Classify images with a model the final evaluation kept.

    python search/predict.py experiments/NAME/eval/model/unfrozen photo1.jpg photo2.png

Prints one line per image: its path, the predicted class and its probability. Images get the
training's own preprocessing (RGB, shorter side to the model's image size, centre crop, the
backbone's normalisation). A file that cannot be read gets an error line and the others are
still predicted; the exit code is 1 if any image failed, 2 if the model folder is unusable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_MODEL, EXIT_SOME_FAILED = 2, 1


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
                        help="a folder with model.safetensors and model.json (eval/model/S)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "model.json").is_file() or not (model_dir / "model.safetensors").is_file():
        print(f"predict.py: error: {model_dir}: no model.json and model.safetensors; pass a "
              "folder the final evaluation wrote, e.g. experiments/NAME/eval/model/STRATEGY",
              file=sys.stderr)
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
