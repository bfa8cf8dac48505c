"""Export a model the final evaluation kept as ONNX, to classify images without torch.

    python search/export.py experiments/NAME/eval/model/unfrozen --onnx unfrozen.onnx

Also `transfer-search export MODEL_DIR|EXP_DIR --onnx FILE`; an experiment directory stands for
its winner's model (the rule search/predict.py uses). The graph takes `images`, float32
(N, 3, S, S): RGB pixel values in [0, 255] after the training's own resize and crop (shorter
side to S, bilinear, centre crop S x S; S is the model's image size), normalises them itself and
outputs `probabilities`, float32 (N, C), a softmax in the order of the classes. The ONNX
model's metadata_props hold the preprocessing, the class names (JSON), the backbone, the
strategy and the test accuracy. Bad input (no model, an unwritable --onnx path) gets one line
and exit code 2; the file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from search.predict import NoModel, find_model

EXIT_BAD_INPUT = 2
INPUT, OUTPUT = "images", "probabilities"
FORMAT = 1  # of the metadata below; a reader may refuse another


class BadDestination(ValueError):
    """An --onnx path that cannot be written; str() names the fix."""


class BadModel(ValueError):
    """A model folder whose files do not load; str() names the fix."""


def check_destination(path: Path) -> Path:
    """`path`, once a file can be renamed into place there: checked before the export, which
    takes seconds to minutes, so a typo costs nothing."""
    where = f"--onnx {path}"
    if path.is_dir():
        raise BadDestination(f"{where}: is a folder; pass a file name, e.g. {path / 'model.onnx'}")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise BadDestination(f"{where}: {folder} {what}; create the folder or pass a path in an "
                             "existing one")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadDestination(f"{where}: {folder} is not writable; pass a path in a folder you "
                             "can write to")
    return path


def onnx_metadata(meta: dict) -> dict[str, str]:
    """model.json as the ONNX model's metadata_props (strings; lists and classes as JSON)."""
    size = int(meta["image_size"])
    props = {
        "transfer_search_format": str(FORMAT),
        "input": f"{INPUT}: float32 (N, 3, {size}, {size}), RGB in [0, 255] after resize and "
                 "crop",
        "output": f"{OUTPUT}: float32 (N, {len(meta['classes'])}), softmax, in the order of "
                  "classes",
        "image_size": str(size),
        "resize": "shorter_side",  # to image_size, then a centre crop: no crop_pct margin
        "interpolation": "bilinear",
        "crop": "center",
        "mean": json.dumps(meta["normalize"]["mean"]),
        "std": json.dumps(meta["normalize"]["std"]),
        "normalization": "in_graph",  # (images / 255 - mean) / std: do not normalise again
        "classes": json.dumps(meta["classes"]),
        "backbone": meta["backbone"],
    }
    for key in ("strategy", "test_acc"):
        if meta.get(key) is not None:
            props[key] = str(meta[key])
    return props


def load(model_dir: Path):
    """(model, normaliser, model.json), or BadModel naming what is wrong with the folder."""
    from safetensors import SafetensorError

    from trainables.export import load_model

    try:
        loaded = load_model(model_dir)
        onnx_metadata(loaded[2])  # the keys of model.json the export reads, checked here too
        return loaded
    except (ValueError, KeyError, OSError, RuntimeError, SafetensorError) as error:
        raise BadModel(f"{model_dir}: cannot load the model ({error}); export a folder the "
                       "final evaluation wrote, whole") from None


def export_onnx(model, norm, meta: dict, destination: Path) -> dict[str, str]:
    """Write the model to `destination` as ONNX, normaliser and softmax included; returns the
    metadata it holds."""
    import torch
    from torch import nn

    from store.atomic import atomic_file

    size = int(meta["image_size"])
    graph = nn.Sequential(norm, model, nn.Softmax(dim=1)).eval()
    example = torch.full((2, 3, size, size), 128.0)
    # dynamo=True: torch.export and onnxscript, offline; the TorchScript exporter is deprecated
    program = torch.onnx.export(graph, (example,), None, dynamo=True, verbose=False,
                                input_names=[INPUT], output_names=[OUTPUT],
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    props = onnx_metadata(meta)
    program.model.metadata_props.update(props)
    with atomic_file(destination) as tmp:
        # one file: external data would keep the temporary name, which the rename leaves behind
        program.save(str(tmp), external_data=False)
    return props


def main(argv: list[str] | None = None, prog: str = "export.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR|EXP_DIR",
                        help="a folder with model.safetensors and model.json (eval/model/S), "
                        "or an experiment directory: its winner's")
    parser.add_argument("--onnx", required=True, type=Path, metavar="FILE",
                        help="the ONNX file to write (replaced if it exists)")
    args = parser.parse_args(argv)
    try:  # these checks import neither torch nor onnx, so bad input answers at once
        model_dir = find_model(args.model_dir)
        destination = check_destination(args.onnx)
        model, norm, meta = load(model_dir)
    except (NoModel, BadDestination, BadModel) as error:
        return fail(prog, error)
    try:
        props = export_onnx(model, norm, meta, destination)
    except OSError as error:  # DiskFullError's message says what to do; others name the cause
        return fail(prog, f"--onnx {destination}: cannot write ({error})")
    print(f"{destination}: {props['backbone']}, {len(json.loads(props['classes']))} classes, "
          f"input {INPUT} (N, 3, {props['image_size']}, {props['image_size']}) in [0, 255], "
          f"output {OUTPUT}; from {model_dir}")
    return 0


def fail(prog: str, error: BaseException | str) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
