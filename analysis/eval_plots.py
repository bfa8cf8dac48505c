"""The final evaluation's two per-strategy plots: a confusion matrix and a t-SNE of test features.

    python search/evaluate.py experiments/NAME   # writes eval/<strategy>/confusion.png, tsne.png

Rows of the confusion matrix are normalised by the true class, so a row reads as "where this
class's test images went" whatever the class sizes. t-SNE (scikit-learn) maps the classifier's
input features to 2-D; well-separated class clusters mean the features, not just the head,
tell the classes apart.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from analysis.plots import save  # noqa: E402
from analysis.style import apply_style  # noqa: E402


def confusion_plot(matrix: np.ndarray, classes: list[str], strategy: str, path: Path) -> Path:
    apply_style()
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(5.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(share, ax=ax, vmin=0, vmax=1, cmap="Blues", square=True,
                annot=len(classes) <= 12, fmt=".2f", annot_kws={"size": 8},
                xticklabels=classes, yticklabels=classes,
                cbar_kws={"label": "share of the true class's test images"})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{strategy}: confusion on the test split ({int(matrix.sum())} images)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    plt.setp(ax.get_yticklabels(), rotation=0)
    return save(fig, path)


def tsne_plot(features: np.ndarray, labels: np.ndarray, classes: list[str], strategy: str,
              path: Path, seed: int = 0) -> Path:
    apply_style()
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca",
                  random_state=seed).fit_transform(features.astype(np.float32))
    fig, ax = plt.subplots(figsize=(8, 6.5))
    names = np.asarray(classes)[labels]
    sns.scatterplot(x=points[:, 0], y=points[:, 1], hue=names, hue_order=classes, ax=ax,
                    s=18, linewidth=0, palette=sns.color_palette("tab10" if len(classes) <= 10
                                                                  else "husl", len(classes)))
    ax.set_xlabel("t-SNE 1 (arbitrary units)")
    ax.set_ylabel("t-SNE 2 (arbitrary units)")
    ax.set_title(f"{strategy}: t-SNE of test-image features, coloured by true class")
    ax.legend(title="class", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    return save(fig, path)
