"""Final evaluation: retrain each strategy's best config over seeds and test it. The only code
that reads the test split.

    python search/evaluate.py experiments/NAME --seeds 3

For each strategy with a successful trial, the best trial's config is trained again from the
same starting weights, once per seed (the experiment's seed, +1, +2, ...), for the epochs of
its best epoch (the lr schedule still spans the trial's full budget, so the experiment's own
seed on `--train-on train` reproduces the searched model). Each (strategy, seed) runs as a Ray
task with one trial's resources. Writes into `<experiment>/eval/`: results.csv (test accuracy
per strategy and seed), summary.md (mean +- std, 95% intervals, the gap between the top two),
per-class precision, recall and F1, a confusion matrix and a t-SNE of the test features per
strategy, and the final model of the search's winner (of every strategy with --keep-all).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import torch

from analysis import leaderboard, load_results
from analysis.eval_plots import confusion_plot, tsne_plot
from analysis.stats import CONFIDENCE, gap_ci, mean_ci
from store.atomic import DiskFullError, atomic_file
from store.layout import EVAL_DIR, EVAL_RESULTS, EVAL_SUMMARY, MODEL_DIR, read_experiment
from trainables.config import RunSettings, TrialConfig
from trainables.data.dataset import DataError, Dataset, Split
from trainables.device import pick_device
from trainables.export import save_model
from trainables.loop import predict
from trainables.models import normalizer
from trainables.reporting import host_copy
from trainables.trainable import fit


def train_and_test(settings: RunSettings, hp: TrialConfig, data: Dataset, test: Split,
                   weights: dict[str, torch.Tensor] | None, epochs: int, train_on: str,
                   keep_model: bool) -> dict:
    """One seed of one config: train on `data` (train and val), then predict `test` (a Ray
    task's body)."""
    start = time.perf_counter()
    train, val = data.train, data.val
    if train_on == "train+val":
        train, val = concat(data.train, data.val), None
    model = fit(settings, hp, train, val, weights, num_classes=data.num_classes, epochs=epochs)
    device = pick_device()
    norm = normalizer(model).to(device)
    # the model stays on its device throughout: what is kept is a host copy of its state
    probs, feats = predict(model, test.images, normalize=norm, device=device)
    out = {"probs": probs.numpy(), "features": feats.numpy(),
           "seconds": time.perf_counter() - start,
           "state": host_copy(model.state_dict()) if keep_model else None}
    if val is not None:
        val_probs, _ = predict(model, val.images, normalize=norm, device=device)
        out["val_acc"] = float((val_probs.argmax(1).numpy() == val.labels).mean())
    return out


def concat(first: Split, second: Split) -> Split:
    return Split(np.concatenate([first.images, second.images]),
                 np.concatenate([first.labels, second.labels]), first.paths + second.paths)


def evaluate_experiment(exp_dir: Path, seeds: int = 3, strategies: tuple[str, ...] = (),
                        train_on: str = "train", keep_all: bool = False,
                        cache_dir: str | None = None, address: str | None = None) -> Path:
    """Evaluate, write `<exp>/eval/`, return its path. Starts Ray unless it is running."""
    from search.pretraining import load_stage_data, run_stages
    from search.resources import init_ray
    from search.spec import spec_from_experiment
    from trainables.data.load import load_dataset

    exp_dir = Path(exp_dir)
    meta = read_experiment(exp_dir)
    board = leaderboard(load_results(exp_dir)).dropna(subset=["val_acc"])
    if strategies:
        board = board[board["strategy"].isin(strategies)]
    unknown = sorted(set(strategies) - set(meta["strategies"]))
    if unknown:
        raise DataError(f"--strategy {', '.join(unknown)}: not in this experiment, which "
                        f"searched {', '.join(meta['strategies'])}")
    if board.empty:
        raise DataError(f"{exp_dir}: no successful trial to evaluate"
                        + (f" for {', '.join(strategies)}" if strategies else ""))
    spec = spec_from_experiment(meta, exp_dir, cache_dir, address)
    spec = replace(spec, strategies=tuple(board["strategy"]))
    data = load_dataset(spec.data, image_size=spec.image_size, seed=spec.seed, split=spec.split,
                        cache_dir=spec.cache_dir)
    if data.test is None or len(data.test) == 0:
        raise DataError(f"{spec.data}: no test split to evaluate on (its --split gave the test "
                        "part 0 images)")
    sources = load_stage_data(spec)
    started = not ray.is_initialized()
    if started:
        init_ray(address, logging_level=logging.WARNING, include_dashboard=False)
    try:
        # one copy of each split in the object store: train and val shared by the stages and
        # the seeds' tasks, test by the tasks alone
        search_ref = ray.put(data.for_search())
        stages = run_stages(spec, data, search_ref, sources)
        outputs = run_seeds(spec, board, data, search_ref, stages.weights, seeds, train_on,
                            keep_all)
    finally:
        if started:
            ray.shutdown()
    return write_eval(exp_dir, spec, board, data, outputs, train_on)


def run_seeds(spec, board: pd.DataFrame, data: Dataset, search_ref: ray.ObjectRef,
              weights: dict, seeds: int, train_on: str, keep_all: bool
              ) -> dict[tuple[str, int], dict]:
    """Every (strategy, seed) as a Ray task, side by side as resources allow."""
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                      max_retries=1)(train_and_test)
    test_ref = ray.put(data.test)
    winner = board["strategy"].iloc[0]
    refs = {}
    for _, row in board.iterrows():
        hp = TrialConfig.from_dict(json.loads(row["hyperparameters"]))
        for i in range(seeds):
            settings = RunSettings(strategy=row["strategy"], backbone=spec.backbones[0],
                                   max_epochs=spec.max_epochs, seed=spec.seed + i,
                                   cpus_per_trial=spec.cpus_per_trial,
                                   gpus_per_trial=spec.gpus_per_trial, compile=spec.compile)
            keep = i == 0 and (keep_all or row["strategy"] == winner)
            refs[(row["strategy"], spec.seed + i)] = task.remote(
                settings, hp, search_ref, test_ref,
                weights[row["strategy"]][settings.for_trial(hp).backbone],
                int(row["best_epoch"]),
                train_on, keep)
    print(f"final evaluation: {len(board)} strategies x {seeds} seeds on the test split "
          f"({len(data.test)} images)", flush=True)
    return dict(zip(refs, ray.get(list(refs.values())), strict=True))


def write_eval(exp_dir: Path, spec, board: pd.DataFrame, data: Dataset,
               outputs: dict[tuple[str, int], dict], train_on: str) -> Path:
    """results.csv, summary.md, per-class reports, plots and the kept models."""
    from sklearn.metrics import classification_report, confusion_matrix

    out = exp_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    labels, classes = data.test.labels, list(data.classes)
    rows = []
    for (strategy, seed), result in outputs.items():
        predicted = result["probs"].argmax(1)
        rows.append({"strategy": strategy, "seed": seed,
                     "test_acc": float((predicted == labels).mean()),
                     "val_acc": result.get("val_acc", np.nan), "train_on": train_on,
                     "epochs": int(board.set_index("strategy").loc[strategy, "best_epoch"]),
                     "seconds": result["seconds"]})
    results = pd.DataFrame(rows)
    with atomic_file(exp_dir / EVAL_RESULTS) as tmp:
        results.to_csv(tmp, index=False)
    for strategy in board["strategy"]:
        first = outputs[(strategy, spec.seed)]  # the experiment's own seed: the kept model
        predicted = first["probs"].argmax(1)
        (out / strategy).mkdir(exist_ok=True)
        with atomic_file(out / strategy / "predictions.csv") as tmp:
            pd.DataFrame({"true": np.asarray(classes)[labels], "predicted": np.asarray(classes)[
                predicted], "probability": first["probs"].max(1)}).to_csv(
                tmp, index_label="test_index")
        report = classification_report(labels, predicted, labels=range(len(classes)),
                                       target_names=classes, output_dict=True, zero_division=0)
        with atomic_file(out / f"classification_report_{strategy}.csv") as tmp:
            pd.DataFrame(report).T.to_csv(tmp)
        matrix = confusion_matrix(labels, predicted, labels=range(len(classes)))
        confusion_plot(matrix, classes, strategy, out / strategy / "confusion.png")
        tsne_plot(first["features"], labels, classes, strategy, out / strategy / "tsne.png",
                  seed=spec.seed)
        if first["state"] is not None:
            keep_model(exp_dir / MODEL_DIR / strategy, first["state"], spec, board, strategy, data,
                       results)
    with atomic_file(exp_dir / EVAL_SUMMARY) as tmp:
        tmp.write_text(summary(results, board))
    return out


def keep_model(directory: Path, state: dict, spec, board: pd.DataFrame, strategy: str,
               data: Dataset, results: pd.DataFrame) -> None:
    from trainables.models import build_model

    row = board.set_index("strategy").loc[strategy]
    hp = TrialConfig.from_dict(json.loads(row["hyperparameters"]))
    backbone = hp.backbone or spec.backbones[0]  # the winner's own, where several were searched
    model = build_model(backbone, data.num_classes, hp.head, hidden=hp.head_hidden,
                        dropout=hp.head_dropout, batch_norm=hp.head_bn)
    model.load_state_dict(state)
    mine = results[(results["strategy"] == strategy) & (results["seed"] == spec.seed)]
    save_model(directory, model, backbone=backbone, hp=hp, classes=data.classes,
               image_size=data.image_size,
               extra={"strategy": strategy, "pretrained": row["pretrained"],
                      "hyperparameters": hp.to_dict(), "epochs": int(row["best_epoch"]),
                      "seed": spec.seed, "test_acc": float(mine["test_acc"].iloc[0]),
                      "test_acc_over_seeds": over_seeds(results, strategy), "data": spec.data})


def over_seeds(results: pd.DataFrame, strategy: str) -> dict | None:
    """The strategy's test accuracy over the evaluation's seeds, with its interval (what
    `serve`'s /metadata reports); None with one seed, which has no spread."""
    stats = mean_ci(results.loc[results["strategy"] == strategy, "test_acc"].to_numpy())
    if stats.n < 2:
        return None
    return {"mean": stats.mean, "std": stats.std, "low": stats.low, "high": stats.high,
            "seeds": stats.n, "confidence": CONFIDENCE}


def summary(results: pd.DataFrame, board: pd.DataFrame) -> str:
    """Markdown: test accuracy per strategy over seeds, and the gap between the top two."""
    lines = ["# Final evaluation on the test split", "",
             "| strategy | search val_acc | test acc mean | std | 95% interval | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    ranked = []
    for strategy in board["strategy"]:
        accs = results.loc[results["strategy"] == strategy, "test_acc"].to_numpy()
        stats = mean_ci(accs)
        ranked.append((stats.mean, strategy, accs))
        val = board.set_index("strategy").loc[strategy, "val_acc"]
        lines.append(f"| {strategy} | {val:.4f} | {stats.mean:.4f} | {stats.std:.4f} | "
                     f"[{stats.low:.4f}, {stats.high:.4f}] | {stats.n} |")
    ranked.sort(key=lambda r: -r[0])
    if len(ranked) > 1:
        (_, top, a), (_, second, b) = ranked[:2]
        gap = gap_ci(a, b)
        lines += ["", f"Gap between the top two by test mean, {top} - {second}: "
                  f"{gap.mean:+.4f}, 95% interval [{gap.low:+.4f}, {gap.high:+.4f}] (Welch)."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("exp_dir", metavar="EXP_DIR", help="an experiment directory")
    p.add_argument("--strategy", action="append", default=[], metavar="S",
                   help="evaluate only this strategy (repeatable; default: every strategy)")
    p.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="trainings per strategy, with seeds SEED..SEED+N-1 (default: 3)")
    p.add_argument("--train-on", choices=("train", "train+val"), default="train",
                   help="what the final models train on (default: train)")
    p.add_argument("--keep-all", action="store_true",
                   help="keep the final model of every strategy, not only the winner's")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="the cache with the stages (default: the experiment's, if present)")
    p.add_argument("--address", default=None, metavar="ADDR", help="a Ray cluster to join")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.seeds < 1:
            raise DataError(f"--seeds {args.seeds}: must be at least 1")
        out = evaluate_experiment(Path(args.exp_dir), args.seeds, tuple(args.strategy),
                                  args.train_on, args.keep_all, args.cache_dir, args.address)
        from analysis.results import refresh_leaderboard

        refresh_leaderboard(Path(args.exp_dir))
    except (DataError, FileNotFoundError, DiskFullError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    print((Path(args.exp_dir) / EVAL_SUMMARY).read_text())
    print(f"evaluation: {out}; the experiment's leaderboard.csv and .md now have test columns")
    return 0


if __name__ == "__main__":  # run as the package module, so Ray's workers can import its tasks
    from search.evaluate import main as package_main

    sys.exit(package_main())
