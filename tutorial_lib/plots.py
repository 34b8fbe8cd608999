"""Figures. Each function draws and returns a matplotlib Figure; none trains or loads anything.

Nothing here changes global matplotlib state: styles are applied per figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image


def image_grid(images: Sequence[Image.Image | np.ndarray], titles: Sequence[str] | None = None, *,
               ncols: int = 8, size: float = 1.6, suptitle: str | None = None) -> plt.Figure:
    """Show images in a grid with optional titles under each."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        ax.imshow(img)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def sample_grid(split, classes: Sequence[str], *, per_class: int = 4, seed: int = 0, ncols: int = 10,
                suptitle: str | None = None) -> plt.Figure:
    """A grid with ``per_class`` random images of each class, in class order, titled by class."""
    rng = np.random.default_rng(seed)
    images, titles = [], []
    for c, name in enumerate(classes):
        idx = np.flatnonzero(split.labels == c)
        for i in rng.choice(idx, size=min(per_class, len(idx)), replace=False):
            images.append(split.image(int(i)))
            titles.append(name)
    return image_grid(images, titles, ncols=min(len(images), ncols), suptitle=suptitle)


def class_counts(counts: pd.DataFrame, *, title: str = "Images per class") -> plt.Figure:
    """Grouped horizontal bars of a classes x splits count table."""
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(counts) + 1.2))
    counts.plot.barh(ax=ax, width=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.legend(title="split", loc="lower right")
    fig.tight_layout()
    return fig


def top_k_bars(predictions: Sequence[tuple[str, float]], image: Image.Image | None = None, *,
               title: str = "Top-5 ImageNet classes") -> plt.Figure:
    """The image beside a bar chart of its top-k class probabilities."""
    fig, axes = plt.subplots(1, 2 if image is not None else 1, figsize=(9 if image is not None else 5, 3),
                             squeeze=False)
    if image is not None:
        axes[0, 0].imshow(image)
        axes[0, 0].axis("off")
    ax = axes[0, -1]
    labels = [name.split(",")[0] for name, _ in predictions]
    ax.barh(labels[::-1], [p for _, p in predictions][::-1], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, name: str, folder: str | Path) -> Path:
    """Save ``fig`` as ``folder/name.png`` (folder created if needed) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], *, title: str, normalize: bool = True,
                     ax: plt.Axes | None = None) -> plt.Figure:
    """Heat map of a confusion matrix (rows true, columns predicted), row-normalised by default."""
    import seaborn as sns

    matrix = np.asarray(matrix, dtype=float)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    if ax is None:
        size = 0.45 * len(classes) + 2
        fig, ax = plt.subplots(figsize=(size + 1, size))
    else:
        fig = ax.figure
    sns.heatmap(shown, annot=matrix.astype(int), fmt="d", cmap="Blues", vmin=0, vmax=1 if normalize else None,
                xticklabels=classes, yticklabels=classes, cbar=normalize, ax=ax, annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig
