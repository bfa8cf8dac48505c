"""One Markdown report of one or more experiments, with its plots as PNGs beside it.

    python analysis/report.py experiments/NAME [experiments/OTHER ...] [--out DIR] [--top-k 3]

Writes report.md (default: into the first experiment's report/ folder): the leaderboard, the
final evaluation's test accuracy and the gap between the top two strategies when it ran, each
plot of analysis.plots with what to read from it, hyperparameter importance per strategy
(analysis.importance) and each pretraining stage with its quality. Reads result files only.
The notebook analysis/leaderboard.ipynb calls `load`, `write_plots` and the table functions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.console import budget_line
from analysis.importance import importance_report
from analysis.results import leaderboard, load_curves, load_eval, load_results
from analysis.stats import gap_ci
from store.atomic import DiskFullError, atomic_file
from store.layout import EVAL_DIR, EXPERIMENT_FILE, STAGES_DIR, read_experiment
from store.uri import RemoteError, is_uri, join_uri, local_copy, upload

MISSING, NOT_MEASURED = "–", "not measured"
# stage kind -> (record field of its per-epoch quality, what that number is)
QUALITY = {"supervised": ("val_acc", "held-out source accuracy (fraction)"),
           "colorization": ("val_l1", "held-out L1 error of ab (Lab units)")}
# plot name -> (function of Tables and the PNG path, what to read from it)
PLOTS = {
    "val_acc_by_strategy": (
        lambda t, p: plots.box_val_acc(t.results, p),
        "How good each strategy is across its sampled hyperparameters, not only at its best: a "
        "box high and tight means robust; crosses are trials ASHA stopped early (their score "
        "is the last rung's)."),
    "learning_curves": (
        lambda t, p: plots.learning_curves(t.results, t.curves, p, t.top_k),
        "Whether the best trials were still improving at the last epoch (a larger "
        "--max-epochs would pay) or had levelled off."),
    "lr_vs_val_acc": (
        lambda t, p: plots.lr_val_acc(t.results, p),
        "Where the good learning rates lie for each strategy; good trials piled at an end of "
        "the range mean the range cuts the optimum off. SGD and AdamW search different ranges."),
    "batch_size_and_augmentation": (
        lambda t, p: plots.batch_and_augment(t.results, p),
        "Whether a batch size or augmentation policy does better within one strategy (follow "
        "one colour across a panel); with a few trials per group these are hints, not effects."),
    "importance": (
        lambda t, p: plots.importance_bars(t.importance, p,
                                           plots.every_strategy(t.results)),
        "Which hyperparameters separated each strategy's top quarter of trials from the rest "
        "(PED-ANOVA); on small studies only large shares mean much."),
    "pretraining_stages": (
        lambda t, p: plots.stage_quality(t.stages, t.stage_curves, p),
        "Whether each pretraining stage learned before its weights were used: source accuracy "
        "should rise and colour error fall."),
    "test_accuracy": (
        lambda t, p: plots.test_accuracy(t.evals, p, plots.every_strategy(t.results)),
        "Test accuracy of each strategy's best config over seeds: strategies whose intervals "
        "overlap are not told apart by the test split."),
}


class ReportError(ValueError):
    """Input that cannot be reported on; the message is the whole error line."""


@dataclass
class Tables:
    """Everything the report shows, as DataFrames."""

    exp_dirs: list[Path]
    metas: list[dict]
    top_k: int
    results: pd.DataFrame
    curves: pd.DataFrame
    evals: pd.DataFrame
    board: pd.DataFrame
    importance: pd.DataFrame
    unranked: dict[str, str]  # strategy -> why it has no importance
    stages: pd.DataFrame
    stage_curves: pd.DataFrame


@dataclass
class Plots:
    paths: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # plot name -> why not drawn


def check_experiment(exp_dir: str | Path) -> dict:
    try:
        return read_experiment(exp_dir)
    except FileNotFoundError as error:
        raise ReportError(str(error)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{exp_dir}: {EXPERIMENT_FILE} is not valid JSON ({error})") from None


def find_experiment(exp_dir: str | Path) -> Path:
    """`exp_dir` as given, or else relative to the repository root (a notebook runs in
    analysis/, while experiments/NAME is relative to the root)."""
    given = Path(exp_dir)
    beside = Path(__file__).resolve().parents[1] / given
    return beside if not given.exists() and beside.exists() else given


def load(exp_dirs: list[str | Path], top_k: int = 3) -> Tables:
    """Read every table of the report from the experiment directories."""
    exp_dirs = [Path(d) for d in exp_dirs]
    metas = [check_experiment(d) for d in exp_dirs]
    results, evals = load_results(*exp_dirs), load_eval(*exp_dirs)
    board = leaderboard(results, top_k, evals=evals) if len(results) else pd.DataFrame()
    importance, unranked = load_importance(exp_dirs)
    stages, stage_curves = stage_tables(exp_dirs, metas)
    return Tables(exp_dirs, metas, top_k, results, load_curves(*exp_dirs), evals, board,
                  importance, unranked, stages, stage_curves)


def load_importance(exp_dirs: list[Path]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Importance of every experiment; strategies are 'experiment/strategy' when several."""
    frames, unranked = [], {}
    for exp_dir in exp_dirs:
        label = (lambda s, name=exp_dir.name: f"{name}/{s}") if len(exp_dirs) > 1 else str
        frame, reasons = importance_report(exp_dir)
        frames.append(frame.assign(strategy=frame["strategy"].map(label)))
        unranked.update({label(s): why for s, why in reasons.items()})
    return pd.concat(frames, ignore_index=True), unranked


def stage_tables(exp_dirs: list[Path], metas: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per pretraining stage, and its quality per epoch (long form)."""
    rows, curves = [], []
    for exp_dir, meta in zip(exp_dirs, metas, strict=True):
        for record in meta.get("stages") or []:
            kind = record.get("stage", "?")
            metric, meaning = QUALITY.get(kind, (None, None))
            values = (record.get(metric) or []) if metric else []
            samples = exp_dir / STAGES_DIR / str(record.get("key")) / "samples.png"
            # the epoch whose weights trials got: the best (early stopping), else the last
            best = record.get("best_epoch") or len(values)
            rows.append({"experiment": exp_dir.name, "stage": kind, "key": record.get("key"),
                         "data": record.get("data"),
                         "epochs": record.get("epochs") or len(record.get("losses") or []) or None,
                         "images": record.get("images"), "seconds": record.get("seconds"),
                         "cached": record.get("cached"), "quality_metric": meaning,
                         "quality": values[best - 1] if values else math.nan,
                         "best_epoch": best or None, "stopped": record.get("stopped"),
                         "samples": samples if samples.is_file() else None})
            curves += [{"key": record.get("key"), "epoch": i, "value": v}
                       for i, v in enumerate(values, start=1)]
    return (pd.DataFrame(rows, columns=["experiment", "stage", "key", "data", "epochs", "images",
                                        "seconds", "cached", "quality_metric", "quality",
                                        "best_epoch", "stopped", "samples"]),
            pd.DataFrame(curves, columns=["key", "epoch", "value"]))


def write_plots(tables: Tables, out: str | Path) -> Plots:
    """Every plot as out/<name>.png; a plot the data cannot make is skipped with its reason."""
    done = Plots()
    for name, (draw, _) in PLOTS.items():
        try:
            done.paths[name] = draw(tables, Path(out) / f"{name}.png")
        except plots.NothingToPlot as reason:
            done.skipped[name] = str(reason)
    return done


def write_report(exp_dirs: list[str | Path], out: str | Path | None = None,
                 top_k: int = 3) -> Path:
    """report.md and its PNGs in `out` (default: the first experiment's report/ folder)."""
    tables = load(exp_dirs, top_k)
    out = Path(out) if out is not None else tables.exp_dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn = write_plots(tables, out)
    names = ", ".join(d.name for d in tables.exp_dirs)
    sections = [f"# Report: {names}", setup_md(tables), "## Leaderboard",
                leaderboard_md(tables), hyperparameters_md(tables.board),
                final_eval_md(tables, out), "## Plots", plots_md(drawn, out),
                "## Hyperparameter importance", importance_md(tables),
                "## Pretraining stages", stages_md(tables, out)]
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text("\n\n".join(s for s in sections if s) + "\n")
    return out / "report.md"


def setup_md(tables: Tables) -> str:
    lines = []
    for exp_dir, meta in zip(tables.exp_dirs, tables.metas, strict=True):
        data = meta.get("dataset") or {}
        sizes = "/".join(str(data.get(k, "?")) for k in ("train", "val", "test"))
        epochs = f"of up to {meta.get('max_epochs')} epochs"
        trials = (f"{meta['samples']} trials per strategy {epochs}" if meta.get("samples")
                  else f"trials {epochs}, as many as fit in each strategy's time")
        lines.append(f"- `{exp_dir.name}`: data {meta.get('data')} "
                     f"({len(data.get('classes', [])) or '?'} classes, {sizes} train/val/test "
                     f"images), backbone {meta.get('backbone')}, {trials}, seed {meta.get('seed')}")
    return "\n".join(lines)


def leaderboard_md(tables: Tables) -> str:
    """The leaderboard as a Markdown table, best val_acc first."""
    board, k = tables.board, tables.top_k
    if board.empty:
        return "No trial has reported yet."
    table = pd.DataFrame({
        "strategy": board["strategy"], "pretrained": board["pretrained"],
        "best val_acc": board["val_acc"].map(_num),
        "best epoch": [MISSING if pd.isna(v) else str(int(e))
                       for v, e in zip(board["val_acc"], board["best_epoch"], strict=True)],
        f"top-{k} val_acc mean ± std": list(map(_pm, board[f"top{k}_mean"], board[f"top{k}_std"])),
        "trials": board["trials"], "errored": board["errored"],
        "stopped early": board["stopped_early"],
        "trial-hours": board["trial_hours"].map(lambda h: f"{h:.3g}")})
    if "test_acc_mean" in board:
        table["test acc mean ± std"] = list(map(_pm, board["test_acc_mean"], board["test_acc_std"]))
        table["test 95% CI"] = list(map(_interval, board["test_ci_low"], board["test_ci_high"]))
        table["test seeds"] = board["test_seeds"].map(_int)
    note = (f"val_acc is each trial's best epoch on the validation split; top-{k} is over the "
            "strategy's best trials that did not error.")
    runs = tables.results.groupby(["experiment", "strategy"]).size()
    budgets = [f"`{d.name}`: {line}" for d, meta in zip(tables.exp_dirs, tables.metas, strict=True)
               if (line := budget_line(meta, runs.get(d.name, pd.Series()).to_dict()))]
    return "\n\n".join([_md(table), note, *budgets])


def hyperparameters_md(board: pd.DataFrame) -> str:
    if board.empty:
        return ""
    lines = ["Hyperparameters of each strategy's best trial:", ""]
    for _, row in board.dropna(subset=["val_acc"]).iterrows():
        params = json.loads(row["hyperparameters"] or "{}")
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in params.items())
        lines.append(f"- **{row['strategy']}** (trial `{row['trial_id']}`): {shown}")
    return "\n".join(lines)


def final_eval_md(tables: Tables, out: Path) -> str:
    """The gap between the top two strategies on test, and links to the evaluation's files."""
    evals = tables.evals
    if evals.empty:
        return ("The final evaluation has not run, so there is no test accuracy "
                "(`python search/run.py ... --final-eval 3`, or `search/evaluate.py`).")
    lines = ["## Final evaluation (test split)", ""]
    means = evals.groupby("strategy")["test_acc"].mean().sort_values(ascending=False)
    if len(means) > 1:
        first, second = means.index[:2]
        gap = gap_ci(*(evals.loc[evals["strategy"] == s, "test_acc"].to_numpy()
                       for s in (first, second)))
        if math.isnan(gap.low):
            verdict = "no interval: a strategy has a single seed"
        else:
            verdict = (f"95% interval [{gap.low:+.4f}, {gap.high:+.4f}] (Welch t); "
                       + ("it contains 0, so the test split does not separate them"
                          if gap.low <= 0 <= gap.high else "it excludes 0"))
        lines.append(f"Gap between the top two strategies by test mean, {first} − {second}: "
                     f"{gap.mean:+.4f}, {verdict}.")
    links = eval_links(tables, out)
    if links:
        lines += ["", links]
    return "\n".join(lines)


def eval_links(tables: Tables, out: Path) -> str:
    """A table of the evaluation's per-strategy files that exist, as links."""
    files = {"confusion matrix": "{s}/confusion.png", "t-SNE": "{s}/tsne.png",
             "per-class report": "classification_report_{s}.csv"}
    rows = []
    for exp_dir in tables.exp_dirs:
        for strategy in tables.evals["strategy"].drop_duplicates():
            cells = {}
            for label, pattern in files.items():
                path = exp_dir / EVAL_DIR / pattern.format(s=strategy)
                cells[label] = f"[{path.name}]({_rel(path, out)})" if path.is_file() else MISSING
            if any(c != MISSING for c in cells.values()):
                name = strategy if len(tables.exp_dirs) == 1 else f"{exp_dir.name}/{strategy}"
                rows.append({"strategy": name, **cells})
    return _md(pd.DataFrame(rows)) if rows else ""


def plots_md(drawn: Plots, out: Path) -> str:
    lines = []
    for name, (_, reading) in PLOTS.items():
        title = name.replace("_", " ")
        if name in drawn.paths:
            lines += [f"### {title}", "", f"![{title}]({_rel(drawn.paths[name], out)})", "",
                      reading, ""]
        else:
            lines += [f"### {title}", "", f"Not drawn: {drawn.skipped.get(name, '?')}.", ""]
    return "\n".join(lines).rstrip()


def importance_md(tables: Tables) -> str:
    """Parameters down, strategies across; a blank cell: the strategy does not search it."""
    imp, lines = tables.importance, []
    if not imp.empty:
        table = imp.pivot_table(index="parameter", columns="strategy", values="importance",
                                sort=False)
        table = table.loc[table.mean(axis=1).sort_values(ascending=False).index]
        trials = imp.groupby("strategy")["trials"].first()
        table.columns = [f"{s} ({trials[s]} trials)" for s in table.columns]
        lines.append(_md(table.map(lambda v: "" if pd.isna(v) else f"{v:.2f}"), index=True))
        lines.append("\nShare of each strategy's importance (PED-ANOVA on its complete "
                     "trials, top quarter against all), each column summing to 1.\n")
    for strategy, why in tables.unranked.items():
        lines.append(f"- {strategy}: no importance, {why}.")
    return "\n".join(lines) or "No study to rank."


def stages_md(tables: Tables, out: Path) -> str:
    stages = tables.stages
    if stages.empty:
        return "No pretraining stage ran: every strategy started from random weights or a file."
    table = pd.DataFrame({
        "stage": stages["stage"], "data": stages["data"].map(_text),
        "epochs": stages["epochs"].map(_int), "kept epoch": stages["best_epoch"].map(_int),
        "stopped": stages["stopped"].map(_text), "images": stages["images"].map(_int),
        "seconds": stages["seconds"].map(lambda s: _num(s, ".1f")),
        "cached": stages["cached"].map(lambda c: MISSING if c is None else "yes" if c else "no"),
        "quality": stages["quality"].map(lambda q: NOT_MEASURED if pd.isna(q) else f"{q:.4g}"),
        "quality measured as": stages["quality_metric"].map(_text),
        "samples": [f"[samples.png]({_rel(p, out)})" if p is not None else MISSING
                    for p in stages["samples"]]})
    if len(tables.exp_dirs) > 1:
        table.insert(0, "experiment", stages["experiment"])
    return (_md(table) + "\n\nQuality is measured at the kept epoch (the best on held-out "
            "images of the data the stage trained on, whose weights trials got; `patience`: "
            "early stopping ended it); a cached stage was trained by an earlier experiment.")


def _md(table: pd.DataFrame, index: bool = False) -> str:
    """A Markdown table of preformatted text, numeric-looking columns aligned right."""
    numeric = re.compile(r"^[-+\d.,±\[\] e–]*$")
    align = [("right" if table[c].astype(str).str.fullmatch(numeric).all() else "left")
             for c in table.columns]
    return table.to_markdown(index=index, disable_numparse=True,
                             colalign=(["left"] if index else []) + align)


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()


def _num(value, fmt: str = ".4f") -> str:
    return MISSING if value is None or pd.isna(value) else format(value, fmt)


def _int(value) -> str:
    return MISSING if value is None or pd.isna(value) else str(int(value))


def _text(value) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) \
        else str(value)


def _pm(mean, std) -> str:
    if pd.isna(mean):
        return MISSING
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _interval(low, high) -> str:
    return MISSING if pd.isna(low) else f"[{low:.4f}, {high:.4f}]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("exp_dirs", nargs="+", metavar="EXP_DIR",
                   help="experiment directories, or URIs (s3://bucket/prefix/NAME)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where report.md and its PNGs go (default: EXP_DIR/report, the first)")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="trials per strategy in the leaderboard's mean ± std (default: 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.top_k < 1:
            raise ReportError(f"--top-k {args.top_k}: must be at least 1")
        local = [local_copy(d) if is_uri(d) else d for d in args.exp_dirs]
        for exp_dir in local:
            check_experiment(exp_dir)
        path = write_report(local, args.out, args.top_k)
    except (ReportError, RemoteError, DiskFullError) as error:
        print(f"report.py: error: {error}", file=sys.stderr)
        return 2
    if args.out is None and is_uri(args.exp_dirs[0]):  # the report goes beside the experiment
        upload(path.parent, join_uri(args.exp_dirs[0], path.parent.name))
        path = join_uri(args.exp_dirs[0], path.parent.name, path.name)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
