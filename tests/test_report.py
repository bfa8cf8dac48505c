"""analysis/report.py, plots.py, importance.py and the leaderboard notebook.

The fast tests use a hand-built experiment (every number in report.md checked by hand) and
hand-built Optuna studies; the slow ones run one tiny real search of every strategy once per
module and report on it: every plot, the real studies' importance, the notebook, the CLI.
"""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import optuna
import pytest
from PIL import Image

from analysis import load_eval, load_results, plots
from analysis.importance import importance_report, importances
from analysis.report import PLOTS, load, write_plots, write_report
from tests.helpers import write_trial
from trainables.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "analysis" / "report.py"
NOTEBOOK = ROOT / "analysis" / "leaderboard.ipynb"
LINK = re.compile(r"\]\(([^)\s]+)\)")


META = {"backbone": "resnet18", "data": "demo", "max_epochs": 4, "seed": 0, "image_size": 32,
        "samples": 3, "optuna_storage": "sqlite:////nowhere/optuna.db",
        "strategies": {"frozen": {"pretrained": "supervised", "study_name": "x/frozen"},
                       "scratch": {"pretrained": "none", "study_name": None},
                       "unfrozen": {"pretrained": "supervised", "study_name": "x/unfrozen"}},
        "stages": [  # a measured stage, and one from before stages measured themselves
            {"stage": "supervised", "key": "supervised-resnet18-1", "seconds": 40.0,
             "losses": [2.0, 1.5], "val_acc": [0.3, 0.6], "epochs": 2, "data": "demo-source",
             "images": 3000, "cached": False},
            {"stage": "colorization", "key": "colorization-resnet18-2", "seconds": 90.0,
             "losses": [0.4, 0.3, 0.2], "cached": True}]}


@pytest.fixture
def hand_built(tmp_path):
    exp = tmp_path / "hand"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps(META))
    common = {"optimizer": "sgd", "batch_size": 64, "augment": "flip"}
    write_trial(exp, "frozen", "a", {**common, "lr": 0.1, "head": "mlp"}, [0.3, 0.5, 0.45, 0.5])
    write_trial(exp, "frozen", "b", {**common, "lr": 0.01, "head": "linear"}, [0.2, 0.25])
    write_trial(exp, "frozen", "e", {**common, "lr": 1.0, "head": "linear"}, [0.9])
    write_trial(exp, "scratch", "c", {"lr": 0.05, "batch_size": 128}, [0.6, 0.7, 0.8, 0.9])
    write_trial(exp, "unfrozen", "d", {"lr": 0.05}, [])
    statuses = {"frozen": [{"trial_id": "a", "errored": False},
                           {"trial_id": "b", "errored": False},
                           {"trial_id": "e", "errored": True, "error": "RuntimeError: x"}],
                "scratch": [{"trial_id": "c", "errored": False}],
                "unfrozen": [{"trial_id": "d", "errored": True, "error": "ValueError: x"}]}
    (exp / "trials.json").write_text(json.dumps(statuses))
    (exp / "eval" / "scratch").mkdir(parents=True)
    (exp / "eval" / "results.csv").write_text(
        "strategy,seed,test_acc\nscratch,0,0.80\nscratch,1,0.84\nscratch,2,0.82\n"
        "frozen,0,0.50\nfrozen,1,0.60\nfrozen,2,0.55\n")
    Image.new("RGB", (8, 8)).save(exp / "eval" / "scratch" / "confusion.png")
    return exp


def markdown_rows(text: str, first_header: str) -> dict[str, dict[str, str]]:
    """The Markdown table whose header starts with `first_header`: first cell -> row."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def assert_links_exist(report: Path) -> list[Path]:
    targets = [report.parent / link for link in LINK.findall(report.read_text())]
    assert targets
    missing = [t for t in targets if not t.is_file()]
    assert not missing, f"report.md links files that do not exist: {missing}"
    return targets


def test_report_leaderboard_numbers_on_a_hand_built_experiment(hand_built):
    report = write_report([hand_built], top_k=3)
    assert report == hand_built / "report" / "report.md"
    text = report.read_text()
    board = markdown_rows(text, "strategy")
    assert list(board) == ["scratch", "frozen", "unfrozen"]
    frozen, scratch, unfrozen = board["frozen"], board["scratch"], board["unfrozen"]
    assert frozen["best val_acc"] == "0.5000" and frozen["best epoch"] == "4"  # 0.9 errored
    assert frozen["top-3 val_acc mean ± std"] == "0.3750 ± 0.1768"  # 0.5 and 0.25
    assert (frozen["trials"], frozen["errored"], frozen["stopped early"]) == ("3", "1", "1")
    assert frozen["trial-hours"] == "0.07"  # 4 + 2 + 1 epochs of 36 s
    assert scratch["top-3 val_acc mean ± std"] == "0.9000"  # one trial: no std
    assert scratch["test acc mean ± std"] == "0.8200 ± 0.0200"
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2) * std / sqrt(3)
    assert scratch["test 95% CI"] == f"[{0.82 - half:.4f}, {0.82 + half:.4f}]"
    assert scratch["test seeds"] == "3"
    assert unfrozen["best val_acc"] == "–" and unfrozen["errored"] == "1"
    assert "scratch − frozen: +0.2700, 95% interval" in text
    assert "it excludes 0" in text

    targets = {t.name for t in assert_links_exist(report)}
    assert "confusion.png" in targets and "tsne.png" not in targets  # only what exists
    stages = markdown_rows(text, "stage")
    assert stages["supervised"]["quality"] == "0.6"
    assert stages["colorization"]["quality"] == "not measured"
    assert stages["colorization"]["epochs"] == "3"  # one loss per epoch
    assert "scratch: no importance, no study (a --config rerun" in text
    assert "frozen: no importance, no optuna.db in the experiment" in text


def test_plots_skip_degenerate_input_with_a_reason(hand_built, tmp_path):
    results = load_results(hand_built)
    drawn = write_plots(load([hand_built]), tmp_path / "plots")
    assert set(drawn.paths) | set(drawn.skipped) == set(PLOTS)
    assert "importance" in drawn.skipped  # no study in this experiment
    for name in ("val_acc_by_strategy", "learning_curves", "test_accuracy",
                 "pretraining_stages", "batch_size_and_augmentation"):
        assert Image.open(drawn.paths[name]).size[0] > 300, name
    with pytest.raises(plots.NothingToPlot, match="learning rate"):
        plots.lr_val_acc(results.assign(lr=math.nan), tmp_path / "lr.png")
    with pytest.raises(plots.NothingToPlot, match="no trial finished"):
        plots.box_val_acc(results.assign(errored=True), tmp_path / "box.png")
    with pytest.raises(plots.NothingToPlot, match="final evaluation"):
        plots.test_accuracy(load_eval(tmp_path), tmp_path / "test.png", ["frozen"])
    # augment only in frozen, batch_size in frozen and scratch: panels, not a crash
    assert plots.batch_and_augment(results.drop(columns=["augment"]), tmp_path / "b.png").is_file()


def study_experiment(tmp_path, studies: dict[str, list[dict]], storage: str) -> Path:
    """An experiment whose optuna.db holds one study per strategy with the given trials."""
    exp = tmp_path / "studies"
    exp.mkdir()
    url = f"sqlite:///{exp / 'optuna.db'}"
    for name, trials in studies.items():
        study = optuna.create_study(study_name=f"s/{name}", storage=url, direction="maximize")
        for t in trials:
            study.add_trial(optuna.trial.create_trial(
                params=t["params"], distributions=t["dists"], value=t.get("value"),
                state=t.get("state", optuna.trial.TrialState.COMPLETE)))
    meta = {"optuna_storage": storage.format(exp=exp),
            "strategies": {n: {"pretrained": "none", "study_name": f"s/{n}"} for n in studies}}
    (exp / "experiment.json").write_text(json.dumps(meta))
    return exp


def test_importance_ranks_what_decides_the_score_and_skips_tiny_studies(tmp_path):
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
             "noise": optuna.distributions.FloatDistribution(0.0, 1.0)}
    ranked = [{"params": {"lr": 10 ** -(i % 4), "noise": (i * 0.37) % 1}, "dists": dists,
               "value": 1.0 - (i % 4) / 4} for i in range(16)]
    failed = [{"params": {"lr": 0.5, "noise": 0.5}, "dists": dists, "value": None,
               "state": optuna.trial.TrialState.FAIL}]
    one_param = {"lr": dists["lr"]}
    studies = {"good": ranked + failed, "one_trial": ranked[:1] + failed,
               "one_param": [{**t, "params": {"lr": t["params"]["lr"]}, "dists": one_param}
                             for t in ranked[:4]],
               "ties": [{**t, "value": 0.1} for t in ranked[:6]]}
    # the recorded path is gone, as in a copied experiment: the one inside it is used
    exp = study_experiment(tmp_path, studies, "sqlite:////moved/away/optuna.db")
    before = (exp / "optuna.db").read_bytes()
    table, why = importance_report(exp)
    good = table[table["strategy"] == "good"].set_index("parameter")
    assert set(good.index) == {"lr", "noise"} and good["importance"].sum() == pytest.approx(1)
    assert good.loc["lr", "importance"] > 0.8 and (good["trials"] == 16).all()  # FAIL left out
    assert set(table["strategy"]) == {"good"}
    assert why["one_trial"].startswith("1 complete trial")
    assert why["one_param"].startswith("only one parameter")
    assert "tie" in why["ties"]
    assert (exp / "optuna.db").read_bytes() == before  # read only


@pytest.mark.parametrize("args", [["{tmp}"], ["{tmp}/missing"]])
def test_cli_refuses_a_directory_that_is_not_an_experiment(tmp_path, args):
    result = subprocess.run([sys.executable, str(REPORT), *[a.format(tmp=tmp_path) for a in args]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("report.py: error: ")
    assert "experiment.json" in lines[0] and "Traceback" not in result.stderr


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert code[0].source.startswith("EXP_DIR = ")


# ---- on a real experiment ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(all_strategies_search, tmp_path_factory) -> Path:
    """The session's tiny search of every strategy, with its final evaluation, copied elsewhere
    so that experiment.json's sqlite path no longer exists: the fallback is exercised."""
    copy = tmp_path_factory.mktemp("real") / "moved"
    shutil.copytree(all_strategies_search[0], copy)
    meta = json.loads((copy / "experiment.json").read_text())
    meta["optuna_storage"] = "sqlite:////no/longer/here/optuna.db"
    (copy / "experiment.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.slow
def test_real_experiment_report_has_every_plot_and_strategy(real, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(REPORT), str(real), "--out", str(out),
                             "--top-k", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (out / "report.md").read_text()
    for strategy in STRATEGIES:
        assert f"| {strategy} " in text
    pngs = [t for t in assert_links_exist(out / "report.md") if t.parent == out]
    names = {p.stem for p in pngs}
    rankable = not importances(real).empty  # else the report says why, instead of a plot
    assert set(PLOTS) - (set() if rankable else {"importance"}) <= names
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.size[0] >= 400 and image.size[1] >= 250, png
    assert "Gap between the top two strategies by test mean" in text
    assert "top-2 val_acc mean ± std" in text


@pytest.mark.slow
def test_importance_on_the_real_studies(real, tmp_path):
    meta = json.loads((real / "experiment.json").read_text())
    url = f"sqlite:///{real / 'optuna.db'}"
    table, ranked = importances(real), 0
    for strategy, info in meta["strategies"].items():
        study = optuna.load_study(study_name=info["study_name"], storage=url)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        rows = table[table["strategy"] == strategy]
        if len(done) >= 2 and len({t.value for t in done}) > 1:
            assert set(rows["parameter"]) == {p for t in done for p in t.params}, strategy
            assert rows["importance"].sum() == pytest.approx(1.0)
            ranked += 1
        else:
            assert rows.empty
    assert ranked, "no real study had two different scores to rank"
    # a study of one trial, beside the real ones, ranks nothing
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(real / "optuna.db", lone / "optuna.db")
    first = next(t for info in meta["strategies"].values()
                 for t in optuna.load_study(study_name=info["study_name"], storage=url).trials
                 if t.state == optuna.trial.TrialState.COMPLETE)
    one = optuna.create_study(study_name="one", storage=f"sqlite:///{lone / 'optuna.db'}",
                              direction="maximize")
    one.add_trial(first)
    meta["strategies"] = {"lone": {"pretrained": "none", "study_name": "one"}}
    meta["optuna_storage"] = f"sqlite:///{lone / 'optuna.db'}"
    (lone / "experiment.json").write_text(json.dumps(meta))
    table, why = importance_report(lone)
    assert table.empty and why["lone"].startswith("1 complete trial")


@pytest.mark.slow
def test_notebook_runs_on_the_real_experiment_without_errors(real):
    import nbclient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = f"EXP_DIR = {str(real)!r}\nTOP_K = 2"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5


def test_the_stage_table_and_plot_show_the_kept_epoch_and_why_the_stage_stopped(tmp_path):
    """Trials got the best epoch's weights, so its quality is the stage's, not the last's."""
    from analysis import plots
    from analysis.report import stage_tables

    meta = {"stages": [{"stage": "colorization", "key": "k", "data": "demo", "epochs": 10,
                        "val_l1": [30.0, 25.0, 27.0, 28.0], "best_epoch": 2,
                        "stopped": "patience", "losses": [1.0] * 4}]}
    stages, curves = stage_tables([tmp_path], [meta])
    row = stages.iloc[0]
    assert (row["quality"], row["best_epoch"], row["stopped"]) == (25.0, 2, "patience")
    png = plots.stage_quality(stages, curves, tmp_path / "stages.png")
    assert Image.open(png).size[0] > 300
