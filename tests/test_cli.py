"""The command line as a user runs it, in a subprocess: the entry points, --help, light imports
for input errors, and --show-space. The bad-input table is tests/test_bad_input.py."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_script, run_search


def test_console_script_and_module_run_the_same_cli(tmp_path):
    script = Path(sys.executable).parent / "transfer-search"
    for command, prog in (([sys.executable, "-m", "search"], "python -m search"),
                          ([str(script)], "transfer-search")):
        if not Path(command[0]).is_file():  # run from a checkout on PYTHONPATH, not installed
            pytest.skip("no transfer-search script beside this Python: pip install -e .")
        result = subprocess.run([*command, "--strategy", "frozen", "--samples", "0"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"{prog}: error: --samples 0: must be at least 1"
        served = subprocess.run([*command, "serve", str(tmp_path / "nowhere")], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert served.returncode == 2 and served.stderr.startswith(f"{prog} serve: error: ")


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


def test_a_space_round_trips_through_show_space(tmp_path):
    first = tmp_path / "space.yaml"
    first.write_text("all:\n  batch_size: [32, 64]\nunfrozen:\n  lr: {low: 1.0e-4, high: 0.1, "
                     "log: true}\n  augment: flip\n")
    shown = run_search(tmp_path, "--strategy", "unfrozen,frozen", "--space", str(first),
                       "--show-space", "--storage", str(tmp_path / "runs"), tiny=False,
                       timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "batch_size: [32, 64]" in shown.stdout and "augment: flip" in shown.stdout
    again = tmp_path / "shown.yaml"
    again.write_text(shown.stdout)
    reshown = run_search(tmp_path, "--strategy", "unfrozen,frozen", "--space", str(again),
                         "--show-space", "--storage", str(tmp_path / "runs"), tiny=False,
                         timeout=120)
    assert reshown.returncode == 0 and reshown.stdout == shown.stdout
    assert not (tmp_path / "runs").exists()


def test_evaluate_py_answers_bad_input_in_one_line(tmp_path):
    """The final evaluation's own entry point; what it computes is tested on the shared
    search's --final-eval (tests/test_handback.py), which calls the same evaluate_experiment."""
    result = run_script("evaluate.py", str(tmp_path / "missing"), timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("evaluate.py: error: ") and "no experiment" in result.stderr
