"""The packages' arrows: no import cycle anywhere, and each package imports only what its job
needs, so the analysis runs where only the results are (no torch) and `store` stays the one
owner of an experiment's files."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "trainables", "spaces", "analysis", "store", "bench")
# the modules of `search` that build the leaderboard and the report at the end of a run
REPORTING = {"search.run", "search.evaluate"}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imported(path: Path, known: set[str]) -> set[str]:
    """The product's modules that `path` imports anywhere in it, functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: imported(path, set(paths)) - {name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_the_product_imports_itself_through_others(graph):
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def arrows(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                  if a.split(".")[0] == source and b.split(".")[0] == target)


@pytest.mark.parametrize(("source", "forbidden"), [
    ("store", ("search", "analysis", "trainables", "spaces")),
    ("analysis", ("search", "trainables", "spaces")),
    ("trainables", ("search", "analysis", "spaces")),
    ("spaces", ("search", "analysis")),
])
def test_a_package_imports_only_the_layers_below_it(graph, source, forbidden):
    assert [a for target in forbidden for a in arrows(graph, source, target)] == []


def test_search_imports_the_analysis_only_to_build_reports(graph):
    users = {a.split(" -> ")[0] for a in arrows(graph, "search", "analysis")}
    assert users <= REPORTING, users - REPORTING


# Run first in a process of its own: no torch module is found, as on a machine without it.
# (None in sys.modules would do it too, but scipy then takes torch for installed and fails.)
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.slow
def test_a_report_is_made_where_torch_is_not_installed(all_strategies_search, tmp_path):
    exp_dir, _ = all_strategies_search
    code = WITHOUT_TORCH + (
        "from analysis.report import main\n"
        f"code = main([{str(exp_dir)!r}, '--out', {str(tmp_path / 'report')!r}])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "report" / "report.md").is_file()
