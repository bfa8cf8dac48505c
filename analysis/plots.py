"""The report's plots: one PNG per function, from analysis' DataFrames, in one seaborn style.

    python analysis/report.py experiments/NAME   # writes these PNGs into experiments/NAME/report/

Every function takes DataFrames (analysis.load_results, load_curves, load_eval, the importance
and stage tables of analysis.importance and analysis.report) and the PNG's path, and returns
the path. Where the data cannot make the plot (no successful trial, no final evaluation, a
column no strategy searched) it raises NothingToPlot with the reason, for the report to print
instead; a panel that cannot be drawn inside a figure says why in the panel. The style and each
strategy's colour come from analysis.style, shared with the final evaluation's plots.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.stats import mean_ci  # noqa: E402
from analysis.style import apply_style, strategy_colours  # noqa: E402
from store.atomic import atomic_file  # noqa: E402

VAL_ACC = "best validation accuracy (fraction)"
AUGMENT_ORDER = ("none", "flip", "crop_flip", "rrc", "trivialaugment", "randaugment")
STAGE_QUALITY = {  # stage kind -> (record field, axis label)
    "supervised": ("val_acc", "held-out source accuracy (fraction)"),
    "colorization": ("val_l1", "held-out L1 error of ab (Lab units)"),
}
DPI, COLUMNS = 120, 3


class NothingToPlot(ValueError):
    """The data cannot make this plot; the message says why, for the report."""


def successful(results: pd.DataFrame) -> pd.DataFrame:
    """Trials that did not error and reported a val_acc."""
    if results.empty or "val_acc" not in results:
        return results.iloc[0:0]
    return results[~results["errored"].astype(bool)].dropna(subset=["val_acc"])


def strategy_order(results: pd.DataFrame) -> list[str]:
    """Best val_acc first, as in the leaderboard; strategies with no successful trial last."""
    best = successful(results).groupby("strategy", sort=False)["val_acc"].max()
    rest = [s for s in dict.fromkeys(results.get("strategy", [])) if s not in best.index]
    return [*best.sort_values(ascending=False).index, *rest]


def every_strategy(results: pd.DataFrame) -> list[str]:
    """The results' strategies in the order the experiment lists them."""
    return list(dict.fromkeys(results.get("strategy", [])))


def box_val_acc(results: pd.DataFrame, path: Path) -> Path:
    """Every trial's best val_acc per strategy: box, and points marked by how the trial ended."""
    ok = successful(results)
    if ok.empty:
        raise NothingToPlot("no trial finished without error, so there is no val_acc to plot")
    order = [s for s in strategy_order(results) if s in set(ok["strategy"])]
    colours = strategy_colours(every_strategy(results))
    fig, ax = _figure(width=max(6.0, 1.3 * len(order) + 2))
    sns.boxplot(data=ok, x="strategy", y="val_acc", order=order, hue="strategy",
                hue_order=order, palette=colours, legend=False, showfliers=False, width=0.55,
                boxprops={"alpha": 0.45}, ax=ax)
    stopped = ok["stopped_early"].astype(bool)
    for subset, marker in ((ok[~stopped], "o"), (ok[stopped], "X")):
        if len(subset):
            sns.stripplot(data=subset, x="strategy", y="val_acc", order=order, color="0.15",
                          marker=marker, size=7, jitter=0.12, alpha=0.85, ax=ax)
    ax.legend(handles=[_marker("o", "full epoch budget"), _marker("X", "stopped early (ASHA)")],
              loc="best", fontsize="small", title="trial")
    errored = int(results["errored"].astype(bool).sum())
    note = f"; {errored} errored trial(s) excluded" if errored else ""
    ax.set(xlabel="strategy", ylabel=VAL_ACC,
           title=f"Best validation accuracy of every trial ({len(ok)} trials{note})")
    _rotate(ax, order)
    return save(fig, path)


def learning_curves(results: pd.DataFrame, curves: pd.DataFrame, path: Path,
                    top_k: int = 3) -> Path:
    """val_acc per epoch of each strategy's top-k trials, one panel per strategy."""
    ok = successful(results)
    if ok.empty or curves.empty:
        raise NothingToPlot("no successful trial reported a learning curve")
    order = strategy_order(results)
    colours = strategy_colours(every_strategy(results))
    fig, axes = _grid(len(order), sharey=True)
    for ax, strategy in zip(axes, order, strict=False):
        top = ok[ok["strategy"] == strategy].nlargest(top_k, "val_acc")
        ax.set_title(strategy)
        if top.empty:
            _note(ax, "no successful trial")
            continue
        for rank, trial_id in enumerate(top["trial_id"]):
            curve = curves[curves["trial_id"] == trial_id].sort_values("epoch")
            ax.plot(curve["epoch"], curve["val_acc"], color=colours[strategy], marker="o",
                    linestyle=("-", "--", ":")[rank % 3], alpha=1 - 0.2 * min(rank, 3),
                    label=f"#{rank + 1} {trial_id}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="x-small", loc="best", title="rank, trial",
                  title_fontsize="x-small")
    fig.supxlabel("epoch")
    fig.supylabel("validation accuracy (fraction)")
    fig.suptitle(f"Validation accuracy per epoch of each strategy's top-{top_k} trials")
    return save(fig, path)


def lr_val_acc(results: pd.DataFrame, path: Path) -> Path:
    """Learning rate against best val_acc, coloured by strategy, marked by optimizer."""
    ok = successful(results)
    if "lr" in ok:
        ok = ok[pd.to_numeric(ok["lr"], errors="coerce") > 0]
    if "lr" not in ok or ok.empty:
        raise NothingToPlot("no successful trial sampled a learning rate")
    order = [s for s in strategy_order(results) if s in set(ok["strategy"])]
    style = "optimizer" if "optimizer" in ok and ok["optimizer"].notna().all() else None
    fig, ax = _figure(width=9)
    sns.scatterplot(data=ok, x="lr", y="val_acc", hue="strategy", hue_order=order,
                    palette=strategy_colours(every_strategy(results)), style=style, s=70,
                    alpha=0.85, ax=ax)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel=VAL_ACC,
           title="Learning rate against best validation accuracy, per trial")
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small")
    return save(fig, path)


def batch_and_augment(results: pd.DataFrame, path: Path) -> Path:
    """Two panels: val_acc by batch size, and by augmentation policy, coloured by strategy."""
    ok = successful(results)
    if ok.empty:
        raise NothingToPlot("no successful trial to compare batch sizes or augmentations on")
    order = [s for s in strategy_order(results) if s in set(ok["strategy"])]
    apply_style()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True, width_ratios=[1, 1.6],
                             layout="constrained")
    panels = (("batch_size", "batch size (images)", None),
              ("augment", "augmentation policy", AUGMENT_ORDER))
    for ax, (column, label, known) in zip(axes, panels, strict=True):
        _category_panel(ax, ok, column, label, known, order,
                        strategy_colours(every_strategy(results)))
    axes[0].set_ylabel(VAL_ACC)
    handles, labels = {}, []
    for ax in axes:  # one legend for both panels: a strategy may be in only one of them
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
        if ax.get_legend():
            ax.get_legend().remove()
    labels = [s for s in order if s in handles]
    handles = [handles[s] for s in labels]
    if handles:
        fig.legend(handles, labels, title="strategy", loc="upper left",
                   bbox_to_anchor=(1.0, 0.9), fontsize="small")
    fig.suptitle("Best validation accuracy by batch size and by augmentation, per trial")
    return save(fig, path)


def _category_panel(ax, ok: pd.DataFrame, column: str, label: str, known, order,
                    colours: dict) -> None:
    ax.set(xlabel=label, title=f"by {label.split(' (')[0]}")
    data = ok.dropna(subset=[column]) if column in ok else ok.iloc[0:0]
    if data.empty:
        _note(ax, f"no trial sampled {column}")
        return
    data = data.assign(**{column: data[column].map(_category)})
    values = list(dict.fromkeys(data[column]))
    cats = ([v for v in known if v in values] + sorted(set(values) - set(known)) if known
            else sorted(values, key=_numeric_first))
    sns.stripplot(data=data, x=column, y="val_acc", order=cats, hue="strategy",
                  hue_order=[s for s in order if s in set(data["strategy"])],
                  palette=colours, dodge=True, jitter=0.08, size=7,
                  alpha=0.85, ax=ax)
    missing = sorted(set(ok["strategy"]) - set(data["strategy"]))
    if missing:
        ax.set_title(f"{ax.get_title()} (not searched: {', '.join(missing)})", fontsize="small")
    _rotate(ax, cats)


def importance_bars(importance: pd.DataFrame, path: Path, strategies: list[str]) -> Path:
    """Hyperparameter importance per strategy (analysis.importance), one panel per strategy;
    `strategies`, all of the results', pick the colours."""
    if importance.empty:
        raise NothingToPlot("no study had 2 or more complete trials and 2 or more parameters")
    order = list(dict.fromkeys(importance["strategy"]))
    colours = strategy_colours([*strategies, *order])
    longest = max(len(str(p)) for p in importance["parameter"])
    fig, axes = _grid(len(order), sharex=True, panel=(4.2 + 0.06 * longest, 3.6))
    for ax, strategy in zip(axes, order, strict=False):
        rows = importance[importance["strategy"] == strategy].sort_values("importance")
        ax.barh(rows["parameter"].astype(str), rows["importance"], color=colours[strategy])
        for y, value in enumerate(rows["importance"]):
            ax.text(value + 0.01, y, f"{value:.2f}", va="center", fontsize="x-small")
        trials = int(rows["trials"].iloc[0]) if "trials" in rows else 0
        ax.set_title(f"{strategy} ({trials} trials)" if trials else strategy)
        ax.set_xlim(0, 1.1)
    fig.supxlabel("importance (share of the total, PED-ANOVA; sums to 1 per strategy)")
    fig.suptitle("Which hyperparameters decided whether a trial reached the top quarter")
    return save(fig, path)


def stage_quality(stages: pd.DataFrame, stage_curves: pd.DataFrame, path: Path) -> Path:
    """Each pretraining stage's quality per epoch, one panel per stage (its own units)."""
    if stages.empty:
        raise NothingToPlot("no pretraining stage ran (every strategy starts from random "
                            "weights or a file)")
    fig, axes = _grid(len(stages), panel=(5.0, 4.0))
    for ax, (_, stage) in zip(axes, stages.iterrows(), strict=False):
        data = stage["data"] if isinstance(stage["data"], str) else "data not recorded"
        ax.set_title(textwrap.shorten(f"{stage['stage']} on {data}", 40), fontsize="medium")
        ax.set_xlabel("epoch")
        curve = stage_curves[stage_curves["key"] == stage["key"]] if len(stage_curves) else []
        field, label = STAGE_QUALITY.get(stage["stage"], (None, "quality"))
        ax.set_ylabel(label)
        if field is None or len(curve) == 0:
            _note(ax, "quality not measured" + ("" if field else f" for {stage['stage']}"))
            continue
        ax.plot(curve["epoch"], curve["value"], marker="o", color="0.25")
        best = stage.get("best_epoch")
        if isinstance(best, (int, float)) and not math.isnan(best) and best in set(curve["epoch"]):
            ax.axvline(best, color="C3", linestyle="--", linewidth=1,
                       label=f"kept: epoch {int(best)}; stopped: {stage.get('stopped') or '?'}")
            ax.legend(loc="best", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Pretraining stages: quality on held-out images after each epoch")
    return save(fig, path)


def test_accuracy(evals: pd.DataFrame, path: Path, strategies: list[str]) -> Path:
    """Final evaluation: test accuracy per seed, and mean with its 95% t-interval; `strategies`,
    all of the results', pick the colours."""
    if evals.empty:
        raise NothingToPlot("the final evaluation did not run (run.py --final-eval N, or "
                            "search/evaluate.py)")
    means = evals.groupby("strategy")["test_acc"].mean().sort_values(ascending=False)
    order = list(means.index)
    fig, ax = _figure(width=max(6.0, 1.3 * len(order) + 2))
    sns.stripplot(data=evals, x="strategy", y="test_acc", order=order, hue="strategy",
                  hue_order=order, palette=strategy_colours([*strategies, *order]), legend=False,
                  size=8, jitter=0.1, alpha=0.8, ax=ax)
    for x, strategy in enumerate(order):
        stats = mean_ci(evals.loc[evals["strategy"] == strategy, "test_acc"].to_numpy())
        err = None if math.isnan(stats.low) else [[stats.mean - stats.low],
                                                  [stats.high - stats.mean]]
        ax.errorbar(x + 0.25, stats.mean, yerr=err, fmt="D", color="black", capsize=5,
                    markersize=6)
    seeds = evals.groupby("strategy")["seed"].nunique()
    ax.legend(handles=[_marker("o", "one seed", colour="0.5"),
                       _marker("D", "mean ± 95% CI (t)", colour="black")],
              loc="best", fontsize="small")
    ax.set(xlabel="strategy", ylabel="test accuracy (fraction)",
           title=f"Test accuracy of each strategy's best config over "
                 f"{_span(seeds.min(), seeds.max())} seeds")
    _rotate(ax, order)
    return save(fig, path)


def save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    try:  # the format is given: matplotlib would not know it from the temporary name alone
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=DPI,
                        bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _figure(width: float = 8.0, height: float = 5.0):
    apply_style()
    return plt.subplots(figsize=(width, height), layout="constrained")


def _grid(n: int, sharex: bool = False, sharey: bool = False, panel=(4.2, 3.4)):
    """Up to COLUMNS panels a row; unused panels hidden. Returns (figure, axes in order)."""
    apply_style()
    cols = min(COLUMNS, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows),
                             sharex=sharex, sharey=sharey, squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, 30), ha="center", va="center", fontsize="small",
            color="0.35", transform=ax.transAxes)
    # tick_params, not set_xticks([]): the latter would clear the ticks of every shared axis
    ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)
    ax.grid(False)


def _rotate(ax, labels) -> None:
    if len(labels) > 3 or max((len(str(s)) for s in labels), default=0) > 10:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")


def _marker(marker: str, label: str, colour: str = "0.15") -> Line2D:
    return Line2D([], [], marker=marker, linestyle="none", color=colour, markersize=7,
                  label=label)


def _category(value) -> str:
    """Category labels as text: 64.0 (a float column, NaN elsewhere) reads as 64."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numeric_first(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, math.inf, value)


def _span(low, high) -> str:
    return str(low) if low == high else f"{low}-{high}"

