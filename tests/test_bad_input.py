"""Bad input, one table: each case exits 2 with one line that names the problem and the fix,
no traceback, no experiment directory, nothing else written. Each case prints that line.

The cases run run.py's `main` in this process (an uncaught exception fails the case, as a
traceback would); tests/test_cli.py runs the same entry point as a subprocess.
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from search.run import main
from tests.helpers import TINY_MODEL

GOOD_CONFIG = {"transfer_search_config": 1, "strategy": "scratch", "data": "demo:8",
               "max_epochs": 2, "hyperparameters": {"lr": 0.1, "batch_size": 32,
                                                    "augment": "flip", "weight_decay": 0.0}}


class Writes:
    """A payload that, if unpickled, writes a file: proof that a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def write(name: str, text: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "in").mkdir(exist_ok=True)
        (tmp / "in" / name).write_text(text)
        return []
    return setup


def weights(kind: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "in").mkdir(exist_ok=True)
        path = tmp / "in" / "w.pth"
        if kind == "text":
            path.write_text("these are not weights")
        elif kind == "shapes":
            torch.save(timm.create_model("test_convnext").state_dict(), path)
        else:  # a pickle whose loading would write a file
            path.write_bytes(pickle.dumps({"conv1.weight": Writes(tmp / "in" / "pwned")}))
        return []
    return setup


def image_folder(classes=("cat", "dog"), per_class=6, empty: str | None = None,
                 corrupt: tuple[str, ...] = ()):
    """Class folders of PNGs under in/images; `empty` has no image file, and the files of the
    classes in `corrupt` are garbage bytes that no decoder reads."""
    def setup(tmp: Path) -> list[str]:
        from PIL import Image

        rng = np.random.default_rng(0)
        for name in classes:
            (tmp / "in" / "images" / name).mkdir(parents=True)
            for i in range(0 if name == empty else per_class):
                path = tmp / "in" / "images" / name / f"{i}.png"
                if name in corrupt:
                    path.write_bytes(rng.bytes(300))
                    continue
                pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path)
        if empty:
            (tmp / "in" / "images" / empty / "notes.txt").write_text("not an image")
        return []
    return setup


def mounted(options: str, fill: int = 0) -> Callable[[Path], list[str]]:
    """A tmpfs at in/mnt (root only; the case is skipped where mounting is not allowed)."""
    def setup(tmp: Path) -> list[str]:
        target = tmp / "in" / "mnt"
        target.mkdir(parents=True)
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True)
        if made.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()})")
        if fill:
            (target / "filler").write_bytes(b"\0" * fill)
        return [str(target)]
    return setup


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S = ["--strategy", "scratch"]
CASES = [
    # numbers: out of range, or not numbers, for every numeric flag
    ("samples 0", [*S, "--samples", "0"], None, "--samples 0: must be at least 1"),
    ("samples text", [*S, "--samples", "ten"], None, "invalid int value: 'ten'"),
    ("max-epochs", [*S, "--max-epochs", "-1"], None, "--max-epochs -1: must be at least 1"),
    ("grace-period", [*S, "--grace-period", "0"], None, "--grace-period 0: must be at least 1"),
    ("reduction-factor", [*S, "--reduction-factor", "1"], None, "must be at least 2"),
    ("image-size small", [*S, "--image-size", "4"], None, "--image-size 4: must be at least 8"),
    ("image-size huge", [*S, "--image-size", "5000"], None, "must be at most 1024"),
    ("pretrain-epochs", [*S, "--pretrain-epochs", "0"], None, "must be at least 1"),
    ("decoder-epochs", ["--strategy", "colorization", "--pretrain-epochs", "2",
                        "--pretext-decoder-epochs", "3"], None, "between 0 and --pretrain-epochs"),
    ("pretext-schedule phase", ["--strategy", "colorization", "--pretext-schedule",
                                "encoder@0.1"], None, "'encoder@0.1' is not a phase"),
    ("pretext-schedule lr", ["--strategy", "colorization", "--pretext-schedule", "all@0"], None,
     "'all@0' is not a phase"),
    ("pretext-schedule and decoder-epochs", ["--strategy", "colorization", "--pretext-schedule",
                                             "three-phase", "--pretext-decoder-epochs", "2"],
     None, "give one"),
    ("pretext-loss unused", [*S, "--pretext-loss", "classification"], None,
     "--pretext-loss sets the colorization stage, and none of scratch starts from it"),
    ("seed", [*S, "--seed", "-1"], None, "--seed -1: must be between 0 and 4294967295"),
    ("max-failures", [*S, "--max-failures", "-2"], None, "must be at least 0"),
    ("final-eval", [*S, "--final-eval", "-1"], None, "--final-eval -1: must be at least 0"),
    ("max-concurrent", [*S, "--max-concurrent", "0"], None, "must be at least 1"),
    ("cpus nan", [*S, "--cpus-per-trial", "nan"], None, "must be a number above 0"),
    ("cpus text", [*S, "--cpus-per-trial", "one"], None, "invalid float value: 'one'"),
    ("gpus share", [*S, "--gpus-per-trial", "0.3"], None, "a fraction 1/k"),
    ("gpus negative", [*S, "--gpus-per-trial", "-1"], None, "must be a number, 0 or more"),
    ("keep-checkpoints", [*S, "--keep-checkpoints", "some"], None, "or all"),
    ("split", [*S, "--split", "0.5,0.5"], None, "--split 0.5,0.5: expected three fractions"),
    ("time-budget text", [*S, "--time-budget", "10x"], None,
     "--time-budget 10x: not a duration; give seconds (600) or a number with s, m or h"),
    ("time-budget zero", [*S, "--time-budget", "0"], None, "--time-budget 0: must be above 0"),
    ("time-budget negative", [*S, "--time-budget", "-5m"], None,
     "--time-budget -5m: must be above 0; give e.g. 90s, 10m or 1.5h"),
    ("time-budget config", ["--config", "{tmp}/in/c.yaml", "--time-budget", "10m"],
     write("c.yaml", yaml.safe_dump(GOOD_CONFIG)), "without a search; drop --time-budget"),
    # names
    ("strategy unknown", ["--strategy", "unfrozn"], None, "did you mean unfrozen?"),
    ("strategy missing", ["--samples", "2"], None, "--strategy is required"),
    ("name traversal", [*S, "--name", "../../escape"], None, "use letters, digits"),
    ("resume traversal", ["--resume", "../escape"], None, "use letters, digits"),
    ("resume missing", ["--resume", "nothing"], None, "--resume nothing: no experiment"),
    # storage
    ("storage is a file", [*S, "--storage", "{tmp}/in/file"], write("file", "x"),
     "is a file, not a folder"),
    ("storage read-only", [*S, "--storage", "{mnt}/runs"], mounted("ro,size=1m"),
     "cannot write in"),
    ("storage full", [*S, "--storage", "{mnt}/runs"], mounted("size=1m"), "MB free"),
    ("cache full", [*S, "--data", "{tmp}/in/images", "--cache-dir", "{mnt}/cache",
                    "--storage", "{tmp}/runs"], lambda t: [*mounted("size=256k", 200_000)(t),
                                                           *image_folder(per_class=20)(t)],
     "no space left on device"),
    # data
    ("data missing", [*S, "--data", "no/such/folder"], None, "no such file or directory"),
    ("demo size", [*S, "--data", "demo:x"], None, "expected demo:N"),
    ("torchvision unknown", [*S, "--data", "torchvision:CIFAR11"], None,
     "not a torchvision dataset"),
    ("torchvision detection", [*S, "--data", "torchvision:VOCDetection"], None,
     "not an image classification set"),
    ("class without images", [*S, "--data", "{tmp}/in/images"], image_folder(empty="dog"),
     "dog: class folder has no images"),
    ("images all corrupt", [*S, "--data", "{tmp}/in/images", "--cache-dir", "{tmp}/in/cache"],
     image_folder(corrupt=("cat", "dog")), "images: no image can be decoded: all 12 image files "
     "are corrupt or truncated and were skipped"),
    ("class all corrupt", [*S, "--data", "{tmp}/in/images", "--cache-dir", "{tmp}/in/cache"],
     image_folder(classes=("cat", "dog", "fox"), corrupt=("dog",)),
     "dog: class folder has no decodable images: all 6 of its files are corrupt or truncated "
     "and were skipped; remove or replace the corrupt files, or drop the class folder"),
    ("image too small", [*S, "--backbone", "convnext_tiny", "--image-size", "16"], None,
     "too small for convnext_tiny"),
    ("backbone list gap", [*S, "--backbone", "resnet18,,resnet50d"], None,
     "--backbone resnet18,,resnet50d: an empty name"),
    ("backbone twice", [*S, "--backbone", "resnet18,resnet18"], None,
     "resnet18 given twice; name each backbone once"),
    ("backbone one unknown", [*S, "--backbone", "resnet18,resnet5"], None,
     "--backbone resnet5: not a timm model"),
    ("space backbone, one listed", [*S, "--space", "{tmp}/in/s.yaml"],
     write("s.yaml", "all:\n  backbone: [resnet18]\n"),
     "sets backbone, which a run searches only over several --backbone names"),
    ("space backbone not listed", [*S, "--backbone", "resnet18,resnet10t", "--space",
                                   "{tmp}/in/s.yaml"],
     write("s.yaml", "scratch:\n  backbone: [resnet18, vgg16]\n"),
     "backbone vgg16 is not among --backbone resnet18,resnet10t"),
    ("config two backbones", ["--config", "{tmp}/in/c.yaml", "--backbone", "resnet18,resnet10t"],
     write("c.yaml", yaml.safe_dump(GOOD_CONFIG)), "give one --backbone, not resnet18,resnet10t"),
    ("batch above train", [*S, "--data", "demo:4", "--space", "{tmp}/in/s.yaml"],
     write("s.yaml", "scratch:\n  batch_size: [64, 128]\n"),
     "batch size 64 (the smallest in --space) is larger than the training split of demo:4"),
    ("config batch above train", ["--config", "{tmp}/in/c.yaml", "--data", "demo:4"],
     write("c.yaml", yaml.safe_dump({**GOOD_CONFIG, "hyperparameters": {
         **GOOD_CONFIG["hyperparameters"], "batch_size": 64}})), "batch size 64 (the smallest "
     "in --config"),
    # space files and configs
    ("space unknown key", [*S, "--space", "{tmp}/in/s.yaml"], write("s.yaml", "scratch:\n  "
                                                                    "colour: [red]\n"), "colour"),
    ("space bounds", [*S, "--space", "{tmp}/in/s.yaml"],
     write("s.yaml", "scratch:\n  lr: {low: 0.1, high: 0.01}\n"), "low"),
    ("space YAML", [*S, "--space", "{tmp}/in/s.yaml"], write("s.yaml", "scratch: [unclosed\n"),
     "line"),
    ("config unknown key", ["--config", "{tmp}/in/c.yaml"],
     write("c.yaml", yaml.safe_dump({**GOOD_CONFIG, "colour": "red"})), "unknown keys"),
    ("config YAML", ["--config", "{tmp}/in/c.yaml"], write("c.yaml", "strategy: [unclosed"),
     "not valid YAML"),
    ("config and strategy", ["--config", "{tmp}/in/c.yaml", "--strategy", "frozen"],
     write("c.yaml", yaml.safe_dump(GOOD_CONFIG)), "--strategy frozen conflicts with --config"),
    ("config python tag", ["--config", "{tmp}/in/c.yaml"],
     write("c.yaml", "!!python/object/apply:os.system ['touch {tmp}/in/pwned']\n"), "--config"),
    # weights
    ("weights missing", [*S, "--strategy", "frozen", "--weights", "nope.pt"], None,
     "--weights nope.pt: no such file"),
    ("weights not a checkpoint", ["--strategy", "frozen", "--backbone", TINY_MODEL, "--weights",
                                  "{tmp}/in/w.pth"], weights("text"), "cannot load"),
    ("weights wrong shapes", ["--strategy", "frozen", "--backbone", TINY_MODEL, "--weights",
                              "{tmp}/in/w.pth"], weights("shapes"), "do not match"),
    ("weights run code", ["--strategy", "frozen", "--backbone", TINY_MODEL, "--weights",
                          "{tmp}/in/w.pth"], weights("pickle"), "cannot load"),
    ("imagenet offline", ["--strategy", "frozen", "--data", "{tmp}/in/images"],
     image_folder(per_class=30), "--weights FILE, or run on --data demo"),
    # cluster
    ("address unreachable", [*S, "--address", "127.0.0.1:{port}"], None, "cannot reach"),
    ("resources", [*S, "--data", "demo:4", "--cpus-per-trial", "512"], None,
     "no node of this Ray cluster has that much"),
    ("optuna storage", [*S, "--optuna-storage", "redis://x"], None, "--optuna-storage"),
]


@pytest.mark.parametrize(("args", "setup", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, capsys, args, setup, message):
    monkeypatch.chdir(tmp_path)
    # a local Ray started by a case listens on loopback (run.py sets both); undone after it
    from ray._private import ray_constants

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
    # the hub of ImageNet weights: a closed port, as on a machine without network
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    made = setup(tmp_path) if setup else []
    try:
        values = {"tmp": tmp_path, "mnt": made[0] if made else "", "port": closed_port()}
        argv = [a.format(**values) for a in args]
        if "--storage" not in argv:
            argv += ["--storage", str(tmp_path / "runs")]
        start = time.perf_counter()
        named = "--resume" in argv or "--name" in argv
        code = main(argv if named else [*argv, "--name", "x"])
        seconds = time.perf_counter() - start
        out, err = capsys.readouterr()
    finally:
        for target in made:
            subprocess.run(["umount", "-l", target], capture_output=True)
    errors = [line for line in err.splitlines() if line.startswith("run.py: error:")]
    with capsys.disabled():
        print(f"\n  {errors[0] if errors else err.strip()[-300:]}  [{seconds:.1f} s]", end="")
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and message.format(tmp=tmp_path) in errors[0], err[-2000:]
    assert "Traceback" not in out + err
    assert seconds < 60  # never a hang: unreachable hubs and clusters answer in seconds
    assert not (tmp_path / "runs" / "x").exists() and not (tmp_path / "in" / "pwned").exists()
    left = {p.name for p in tmp_path.iterdir()} - {"in", "runs"}
    assert not left, f"written beside the command: {left}"


# an out-of-range value for every numeric flag of the parser (with what makes it one)
OUT_OF_RANGE = {
    "--image-size": ["4"], "--pretrain-epochs": ["0"], "--samples": ["0"],
    "--max-epochs": ["0"], "--grace-period": ["0"], "--reduction-factor": ["1"],
    "--seed": ["-1"], "--max-failures": ["-1"], "--final-eval": ["-1"],
    "--cpus-per-trial": ["0"], "--gpus-per-trial": ["-0.5"], "--max-concurrent": ["0"],
    "--pretext-decoder-epochs": ["11"], "--pretrain-patience": ["-1"],
}


def numeric_flags() -> list[tuple[str, type]]:
    from search.options import build_parser

    return [(a.option_strings[-1], a.type) for a in build_parser()._actions
            if a.type in (int, float)]


def test_every_numeric_flag_has_an_out_of_range_case():
    assert {flag for flag, _ in numeric_flags()} == set(OUT_OF_RANGE)


@pytest.mark.parametrize(("flag", "kind"), numeric_flags(), ids=lambda x: getattr(x, "__name__",
                                                                                  x))
def test_every_numeric_flag_refuses_text_and_out_of_range_values(tmp_path, monkeypatch, capsys,
                                                                  flag, kind):
    monkeypatch.chdir(tmp_path)
    strategy = "colorization" if flag == "--pretext-decoder-epochs" else "scratch"
    for value, message in (("ten", f"invalid {kind.__name__} value: 'ten'"),
                           (OUT_OF_RANGE[flag][0], f"{flag}")):
        code = main(["--strategy", strategy, flag, value, "--storage", str(tmp_path / "runs"),
                     "--name", "x"])
        err = capsys.readouterr().err
        with capsys.disabled():
            print(f"\n  {err.strip()}", end="")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
