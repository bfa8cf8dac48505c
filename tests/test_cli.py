"""Bad command-line input: exit code 2, one clear message, no traceback, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RUN = Path(__file__).resolve().parents[1] / "search" / "run.py"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "bogus"], "invalid choice: 'bogus'"),
        (["--strategy", "unfrozen", "--samples", "0"], "--samples 0: must be at least 1"),
        (["--strategy", "unfrozen", "--max-epochs", "-1"], "--max-epochs -1: must be at least 1"),
        (["--strategy", "unfrozen", "--data", "no/such/folder"],
         "--data no/such/folder: no such file or directory"),
        (["--strategy", "frozen", "--backbone", "resnet18x"], "close matches: resnet18"),
        (["--strategy", "frozen", "--weights", "missing.pt"], "--weights missing.pt: no such file"),
        (["--strategy", "scratch", "--data", "demo:x"], "expected demo:N"),
        (["--samples", "2"], "--strategy is required (or --config FILE"),
        (["--strategy", "unfrozen", "--keep-checkpoints", "some"],
         "--keep-checkpoints some: expected a number of trials (1 or more) or all"),
        (["--strategy", "unfrozen", "--final-eval", "-1"], "--final-eval -1: must be at least 0"),
        (["--strategy", "unfrozen", "--max-failures", "-2"],
         "--max-failures -2: must be at least 0"),
        (["--config", "missing.yaml"], "--config missing.yaml: cannot read"),
        (["--strategy", "frozen", "--data", ".", "--pretrained", "supervised"],
         "--pretrained supervised needs --pretrain-data"),
        (["--strategy", "colorization", "--pretext-data", "nowhere"],
         "--pretext-data nowhere: no such directory"),
        (["--strategy", "frozen,unfrozn"], "invalid choice: 'unfrozn'"),
        (["--strategy", "frozen", "--gpus-per-trial", "0.3"], "a fraction 1/k"),
        (["--strategy", "frozen", "--optuna-storage", "redis://x"], "--optuna-storage"),
        (["--strategy", "unfrozen", "--split", "0.5,0.5"], "--split 0.5,0.5: expected three"),
    ],
)
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, args, message):
    storage = tmp_path / "experiments"
    result = run_cli(*args, "--storage", str(storage), "--name", "x", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not storage.exists()
    assert list(tmp_path.iterdir()) == []


GOOD_CONFIG = {"transfer_search_config": 1, "strategy": "scratch", "data": "demo:8",
               "max_epochs": 2, "hyperparameters": {"lr": 0.1, "batch_size": 32,
                                                    "augment": "flip", "weight_decay": 0.0}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"transfer_search_config": 7}, "written by config version 7, this version reads 1"),
        ({"transfer_search_config": None}, "written by config version None"),
        ({"hyperparameters": {"lr": 0.1}}, "bad hyperparameters"),
        ({"hyperparameters": {"lr": 0.1, "batch_size": 32, "augment": "flip",
                              "weight_decay": 0.0, "momentum": 0.9}}, "unknown trial config keys"),
        ({"hyperparameters": {"lr": -1.0, "batch_size": 32, "augment": "flip",
                              "weight_decay": 0.0}}, "out-of-range hyperparameters"),
        ({"strategy": "nope"}, "strategy 'nope': invalid choice"),
        ("strategy: [unclosed", "not valid YAML"),
        ("just a string", "not a best config"),
    ],
)
def test_bad_config_files_exit_2(tmp_path, change, message):
    import yaml

    configs = tmp_path / "configs"
    configs.mkdir()
    text = change if isinstance(change, str) else yaml.safe_dump({**GOOD_CONFIG, **change})
    (configs / "best.yaml").write_text(text)
    storage = tmp_path / "experiments"
    result = run_cli("--config", str(configs / "best.yaml"), "--storage", str(storage),
                     "--name", "x", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not storage.exists()


def test_config_and_another_strategy_conflict(tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(GOOD_CONFIG))
    result = run_cli("--config", str(tmp_path / "c.yaml"), "--strategy", "frozen",
                     "--storage", str(tmp_path / "e"), cwd=tmp_path)
    assert result.returncode == 2
    assert "--strategy frozen conflicts with --config" in result.stderr


def test_existing_experiment_name_is_refused(tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    result = run_cli("--strategy", "scratch", "--storage", str(tmp_path / "runs"),
                     "--name", "taken", cwd=tmp_path)
    assert result.returncode == 2
    assert "already exists" in result.stderr


def test_data_errors_found_while_loading_exit_2(tmp_path):
    data = tmp_path / "images"
    (data / "only_class").mkdir(parents=True)
    (data / "only_class" / "notes.txt").write_text("not an image")
    result = run_cli("--strategy", "scratch", "--data", str(data), "--storage",
                     str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    assert "only_class: class folder has no images" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_offline_imagenet_weights_exit_2_naming_both_ways_out(tmp_path):
    data = write_image_folder(tmp_path / "images")
    result = subprocess.run(
        [sys.executable, str(RUN), "--strategy", "frozen", "--data", str(data), "--backbone",
         "resnet18", "--storage", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if "run.py: error" in line]
    assert len(error) == 1 and "--weights FILE" in error[0] and "--data demo" in error[0]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").glob("frozen-*"))


def test_console_script_and_module_run_the_same_cli(tmp_path):
    script = Path(sys.executable).parent / "transfer-search"
    for command, prog in (([str(script)], "transfer-search"),
                          ([sys.executable, "-m", "search"], "python -m search")):
        result = subprocess.run([*command, "--strategy", "frozen", "--samples", "0"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"{prog}: error: --samples 0: must be at least 1"


def test_help_groups_every_option_with_its_default():
    from search.spec import build_parser

    parser = build_parser()
    groups = {g.title: g for g in parser._action_groups}
    assert ["data", "strategies and weights", "search", "search space", "resources and cluster",
            "output"] == [t for t in groups if t not in ("positional arguments", "options")]
    for action in parser._actions:
        if action.dest != "help":
            assert "(default: " in action.help or "(required" in action.help, action.dest
    assert parser.epilog.count("python search/run.py --strategy") >= 3


def test_help_and_input_errors_load_no_torch():
    """--help and bad flags answer before torch, timm or Ray are imported."""
    code = (
        "import sys\n"
        "from search.spec import UsageError, parse_spec\n"
        "try:\n"
        "    parse_spec(['--strategy', 'unfrozen', '--samples', '0'])\n"
        "except UsageError:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'ray', 'optuna', 'torchvision')\n"
        "               if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("unfrozen:\n  lr: {low: 0.1, high: 0.01}\n", "low"),
    ("unfrozen:\n  colour: [red]\n", "colour"),
    ("unfrozn:\n  lr: 0.1\n", "unfrozn"),
    ("unfrozen:\n  batch_size: []\n", "empty"),
    ("unfrozen:\n  lr: [unclosed\n", "line"),
])
def test_every_bad_space_file_exits_2_and_writes_nothing(tmp_path, text, message):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    storage = tmp_path / "runs"
    result = run_cli("--strategy", "unfrozen", "--space", str(space), "--storage", str(storage),
                     "--name", "x", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--space" in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not storage.exists()


def test_a_space_round_trips_through_show_space(tmp_path):
    first = tmp_path / "space.yaml"
    first.write_text("all:\n  batch_size: [32, 64]\nunfrozen:\n  lr: {low: 1.0e-4, high: 0.1, "
                     "log: true}\n  augment: flip\n")
    shown = run_cli("--strategy", "unfrozen,frozen", "--space", str(first), "--show-space",
                    "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "batch_size: [32, 64]" in shown.stdout and "augment: flip" in shown.stdout
    again = tmp_path / "shown.yaml"
    again.write_text(shown.stdout)
    reshown = run_cli("--strategy", "unfrozen,frozen", "--space", str(again), "--show-space",
                      "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert reshown.returncode == 0 and reshown.stdout == shown.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_request_no_node_can_hold_fails_before_the_search(tmp_path):
    storage = tmp_path / "runs"
    result = run_cli("--strategy", "scratch", "--data", "demo:4", "--gpus-per-trial", "4",
                     "--storage", str(storage), "--name", "x", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no node of this Ray cluster has that much" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (storage / "x").exists()
