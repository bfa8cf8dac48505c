"""Nothing the product reads can run code: no unpickling, no unsafe YAML, no shell, no eval.

Weights files, checkpoints, cache entries, space files and best configs may come from
elsewhere (a downloaded checkpoint, a copied experiment, a shared cache), so each reader must
refuse a file that carries code rather than run it. The static scan keeps new code from
reopening those doors; the payload tests show the doors that exist stay shut.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("search", "trainables", "spaces", "analysis", "bench")

# Calls that run code carried by their input, or a shell.
FORBIDDEN_CALLS = {
    **dict.fromkeys(("pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load",
                     "_pickle.loads", "cloudpickle.load", "cloudpickle.loads", "marshal.load",
                     "marshal.loads", "shelve.open", "joblib.load", "pandas.read_pickle"),
                    "unpickles its input, which runs code"),
    **dict.fromkeys(("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all",
                     "yaml.full_load", "yaml.full_load_all"),
                    "YAML that may build Python objects; use yaml.safe_load"),
    **dict.fromkeys(("os.system", "os.popen", "subprocess.getoutput",
                     "subprocess.getstatusoutput"), "runs a shell"),
    **dict.fromkeys(("eval", "exec", "builtins.eval", "builtins.exec"), "runs a string as code"),
}
# Names that only exist to build arbitrary objects from YAML.
FORBIDDEN_NAMES = {f"yaml.{name}": "a YAML loader that builds Python objects"
                   for name in ("Loader", "UnsafeLoader", "FullLoader", "CLoader",
                                "CUnsafeLoader", "CFullLoader")}
# Loaders that unpickle unless told weights_only=True.
WEIGHTS_ONLY = ("torch.load", "torch.serialization.load", "timm.models.load_state_dict",
                "timm.models.load_checkpoint")


class Scan(ast.NodeVisitor):
    """The forbidden calls and names of one module, each as 'file:line: what'."""

    def __init__(self, where: str):
        self.where, self.aliases, self.problems = where, {}, []

    def report(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.where}:{node.lineno}: {what}")

    def name(self, node: ast.AST) -> str | None:
        """The dotted name an expression refers to, imports resolved (np.load -> numpy.load)."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.name(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            head = alias.name.split(".")[0]
            self.aliases[alias.asname or head] = alias.name if alias.asname else head
            if head == "dill":
                self.report(node, "imports dill, which unpickles")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = full
            if (node.module or "").split(".")[0] == "dill":
                self.report(node, "imports dill, which unpickles")
            elif full in FORBIDDEN_CALLS or full in FORBIDDEN_NAMES:
                self.report(node, f"imports {full}: "
                            f"{FORBIDDEN_CALLS.get(full) or FORBIDDEN_NAMES[full]}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self.name(node)
        if name in FORBIDDEN_NAMES:
            self.report(node, f"{name}: {FORBIDDEN_NAMES[name]}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.name(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in FORBIDDEN_CALLS:
            self.report(node, f"{name}(): {FORBIDDEN_CALLS[name]}")
        if name and name.split(".")[0] == "dill":
            self.report(node, f"{name}(): dill unpickles")
        if name in WEIGHTS_ONLY and not is_constant(keywords.get("weights_only"), True):
            self.report(node, f"{name}() without weights_only=True unpickles arbitrary objects")
        if name == "numpy.load" and not is_constant(keywords.get("allow_pickle", False), False):
            self.report(node, "numpy.load(allow_pickle=...) unpickles object arrays")
        if "shell" in keywords and not is_constant(keywords["shell"], False):
            self.report(node, f"{name}(shell=...) runs a shell")
        self.generic_visit(node)


def is_constant(node: ast.AST | bool | None, value: bool) -> bool:
    if isinstance(node, bool):
        return node is value
    return isinstance(node, ast.Constant) and node.value is value


def scan(source: str, where: str) -> list[str]:
    scanner = Scan(where)
    scanner.visit(ast.parse(source, filename=where))
    return scanner.problems


def product_sources() -> list[tuple[str, str]]:
    """(file, Python source) of every module and notebook of the product."""
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((str(path.relative_to(ROOT)), path.read_text()))
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            cells = json.loads(path.read_text())["cells"]
            code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
            lines = "\n".join(code).splitlines()  # IPython magics and shell escapes are not Python
            found.append((str(path.relative_to(ROOT)), "\n".join(
                "" if line.lstrip().startswith(("%", "!")) else line for line in lines)))
    return found


# The static scan ----------------------------------------------------------------------------


def test_the_product_never_unpickles_loads_unsafe_yaml_or_runs_a_shell_or_a_string():
    sources = product_sources()
    assert len(sources) > 50  # the folders were found
    problems = [p for where, source in sources for p in scan(source, where)]
    assert problems == [], "\n" + "\n".join(problems)


def test_the_scan_finds_each_forbidden_pattern():
    bad = """
import pickle, os, subprocess, dill
import numpy as np
import yaml as y
from torch import load as tload
from cloudpickle import loads
pickle.load(f)
loads(b)
y.load(text)
y.unsafe_load(text)
y.safe_load(text, Loader=y.Loader)
tload(path)
np.load(path, allow_pickle=True)
subprocess.run(cmd, shell=True)
os.system("ls")
os.popen("ls")
eval("1")
exec("x = 1")
"""
    problems = scan(bad, "bad.py")
    lines = sorted({int(p.split(":")[1]) for p in problems})
    assert lines == [2, 6, *range(7, 19)], "\n".join(problems)
    good = """
import subprocess, torch, yaml, numpy as np
torch.load(path, map_location="cpu", weights_only=True)
yaml.safe_load(text)
np.load(path)
subprocess.run(["ls"], check=True)
model.eval()
"""
    assert scan(good, "good.py") == []


# Pickles that would run code ------------------------------------------------------------------


class WritesMarker:
    """Unpickling this writes its marker file: the proof that a loader ran the pickle's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (Path(self.marker), "pwned")


def malicious(path: Path, marker: Path, kind: str) -> Path:
    """A file at `path` that runs code when unpickled: a bare pickle, or torch.save's zip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "pickle":
        path.write_bytes(pickle.dumps(WritesMarker(marker), protocol=2))  # torch.save's own
    else:
        torch.save({"state": WritesMarker(marker)}, path)
    return path


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(malicious(tmp_path / "x.pkl", marker, "pickle").read_bytes())
    assert marker.read_text() == "pwned"  # so the refusals below are refusals, not duds


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_weights_file_that_carries_code_is_refused(tmp_path, kind):
    from trainables.pretrain import StageError, file_state

    marker = tmp_path / "pwned"
    weights = malicious(tmp_path / "weights.pth", marker, kind)
    with pytest.raises(StageError, match=r"--weights .*weights\.pth: cannot load"):
        file_state(TINY_MODEL, str(weights))
    import timm

    with pytest.raises(RuntimeError, match="weights_only=True blocked"):  # what file_state uses
        timm.models.load_state_dict(str(weights), weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_trial_checkpoint_that_carries_code_is_refused(tmp_path, kind):
    from trainables.trainable import CHECKPOINT_FILE, load_checkpoint

    marker = tmp_path / "pwned"
    malicious(tmp_path / "checkpoint_000001" / CHECKPOINT_FILE, marker, kind)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "checkpoint_000001")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_cached_stage_that_carries_code_is_refused(tmp_path, kind):
    from trainables.pretrain import RECORD_FILE, WEIGHTS_FILE, read_stage

    marker, entry = tmp_path / "pwned", tmp_path / "stages" / "supervised-x"
    malicious(entry / WEIGHTS_FILE, marker, kind)
    (entry / RECORD_FILE).write_text(json.dumps({"stage": "supervised"}))
    with pytest.raises(pickle.UnpicklingError):
        read_stage(entry)
    assert not marker.exists()


# YAML that would run code ---------------------------------------------------------------------


def python_tag(marker: Path) -> str:
    return f'!!python/object/apply:os.system ["echo pwned > {marker}"]'


def test_the_yaml_payload_is_live(tmp_path):
    marker = tmp_path / "pwned"
    yaml.unsafe_load(python_tag(marker))
    assert marker.is_file()  # so the refusals below are refusals, not duds


@pytest.mark.parametrize("document", ["{tag}\n", "frozen:\n  lr: {tag}\n"])
def test_a_space_file_with_a_python_tag_is_refused(tmp_path, document):
    from spaces.overrides import SpaceFileError, load_space_file

    marker = tmp_path / "pwned"
    space = tmp_path / "space.yaml"
    space.write_text(document.format(tag=python_tag(marker)))
    with pytest.raises(SpaceFileError, match="space.yaml"):
        load_space_file(str(space), ["frozen"])
    assert not marker.exists()


@pytest.mark.parametrize("document", ["{tag}\n", "config_version: 1\nstrategy: {tag}\n"])
def test_a_best_config_with_a_python_tag_is_refused(tmp_path, document):
    from store.best_config import ConfigError, read_best_config

    marker = tmp_path / "pwned"
    config = tmp_path / "frozen.yaml"
    config.write_text(document.format(tag=python_tag(marker)))
    with pytest.raises(ConfigError, match="frozen.yaml: not valid YAML"):
        read_best_config(config)
    assert not marker.exists()
