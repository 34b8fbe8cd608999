"""Figures. Each function draws and returns a matplotlib Figure; none trains or loads anything.

Nothing here changes global matplotlib state: styles are applied per figure.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image


# Colours: our results in blue; the talk's figures (other data) in orange and hatched, so they never pass for ours.
OURS_COLOUR, TALK_COLOUR = "tab:blue", "tab:orange"


def _title_height(titles: Sequence[str] | None, fontsize: float = 8) -> float:
    """Inches a row of axis titles needs above its images (the tallest title's lines)."""
    if not titles:
        return 0.0
    return 0.18 * fontsize / 8 * max(str(t).count("\n") + 1 for t in titles)


def _wrapped(title: str, fig: plt.Figure, fontsize: float = 12) -> str:
    """``title`` wrapped to the figure's width, so a long title is not cut off at the edges."""
    chars = max(20, int(fig.get_figwidth() * 130 / fontsize))
    return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


def image_grid(images: Sequence[Image.Image | np.ndarray], titles: Sequence[str] | None = None, *,
               ncols: int = 8, size: float = 1.6, suptitle: str | None = None) -> plt.Figure:
    """Show images in a grid with optional titles above each (room is left for every line of them)."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    row_height = size + _title_height(titles)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, row_height * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        ax.imshow(img)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(_wrapped(suptitle, fig))
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
    ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
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
    """Heat map of a confusion matrix (rows true, columns predicted), row-normalised by default.

    The numbers in the cells are image counts; the colour is the share of each true class's images (its row),
    and the colour bar says so.
    """
    import seaborn as sns

    matrix = np.asarray(matrix, dtype=float)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    if ax is None:
        size = 0.45 * len(classes) + 2
        fig, ax = plt.subplots(figsize=(size + 1, size))
    else:
        fig = ax.figure
    colour_label = "share of the true class's images (row)" if normalize else "images"
    sns.heatmap(shown, annot=matrix.astype(int), fmt="d", cmap="Blues", vmin=0, vmax=1 if normalize else None,
                xticklabels=classes, yticklabels=classes, ax=ax, annot_kws={"fontsize": 8},
                cbar_kws={"label": colour_label})
    ax.set_xlabel("predicted (cell numbers: images)")
    ax.set_ylabel("true")
    ax.set_title(_wrapped(title, fig, fontsize=11), fontsize=11)
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, *, title: str) -> plt.Figure:
    """Loss and accuracy per epoch from a training history (:func:`tutorial_lib.loop.fit`)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax_loss.plot(history["epoch"], history["train_loss"], marker=".", label="train")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_acc.plot(history["epoch"], history["train_accuracy"], marker=".", label="train")
    ax_acc.plot(history["epoch"], history["val_accuracy"], marker=".", label="validation")
    score = history["val_score"] if "val_score" in history else None
    picks_on_score = score is not None and not np.allclose(score, history["val_accuracy"], equal_nan=True)
    if picks_on_score:  # e.g. kappa: the epoch kept is the one with the best validation score, not accuracy
        ax_acc.plot(history["epoch"], score, marker=".", linestyle="--", label="validation score (picks the epoch)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy / score" if picks_on_score else "accuracy")
    ax_acc.set_title("accuracy and validation score" if picks_on_score else "accuracy")
    ax_acc.legend(fontsize=8)
    fig.suptitle(_wrapped(title, fig))
    fig.tight_layout()
    return fig


def prediction_grid(split, predicted: np.ndarray, classes: Sequence[str], *, n: int = 16, seed: int = 0,
                    title: str = "test images: predicted (true)") -> plt.Figure:
    """Random images with predicted and true class; wrong predictions in red."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(split), size=min(n, len(split)), replace=False)
    fig = image_grid([split.image(int(i)) for i in idx],
                     [f"{classes[predicted[i]]}\n({classes[split.labels[i]]})" for i in idx],
                     ncols=8, size=1.7, suptitle=title)
    for ax, i in zip(fig.axes, idx):
        ax.title.set_color("tab:green" if predicted[i] == split.labels[i] else "tab:red")
    return fig


def heatmap_overlays(images: Sequence[Image.Image], heatmaps: Sequence[np.ndarray], titles: Sequence[str], *,
                     suptitle: str, ncols: int = 4) -> plt.Figure:
    """Images with a heat map (e.g. Grad-CAM, values in [0, 1]) laid over them."""
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, (2.3 + _title_height(titles)) * nrows + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cam, title in zip(axes.flat, images, heatmaps, titles):
        ax.imshow(img)
        ax.imshow(np.asarray(Image.fromarray(np.uint8(cam * 255)).resize(img.size, Image.BILINEAR)) / 255.0,
                  cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    fig.suptitle(_wrapped(suptitle, fig))
    fig.tight_layout()
    return fig


def method_comparison(table: pd.DataFrame, metric: str, *, title: str, reference: dict[str, float] | None = None
                      ) -> plt.Figure:
    """Bars of one metric per method (rows of ``table``), with optional reference lines (e.g. the talk's).

    Rows whose name starts with "talk" are the talk's figures on its own data: drawn in another colour,
    hatched, and named in the legend as other data. The legend sits below the axes, never over a bar.
    """
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(table) + 1.4))
    values = table[metric]
    talk = values.index.astype(str).str.startswith("talk")
    bars = ax.barh(values.index[::-1], values.values[::-1], color=np.where(talk, TALK_COLOUR, OURS_COLOUR)[::-1])
    for bar, is_talk in zip(bars, talk[::-1]):
        if is_talk:
            bar.set_hatch("//")
    for y, v in enumerate(values.values[::-1]):
        ax.text(v + 0.005, y, f"{v:.3f}", va="center", fontsize=8)
    handles = [Patch(color=OURS_COLOUR, label="ours (this data)")]
    if talk.any():
        handles.append(Patch(facecolor=TALK_COLOUR, hatch="//", label="the talk (its own data)"))
    for i, (label, value) in enumerate((reference or {}).items()):
        handles.append(ax.axvline(value, color=f"C{i + 2}", linestyle="--", label=label))
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(metric)
    ax.set_title(title)
    if not (talk.any() or reference):
        fig.tight_layout()
        return fig
    legend_inches = 0.2 * int(np.ceil(len(handles) / 2)) + 0.1  # a strip under the axes, two entries a row
    fig.set_figheight(fig.get_figheight() + legend_inches)
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return fig


def seed_spread(members: pd.DataFrame, *, ensemble: dict[str, float], title: str,
                reference: dict[str, dict[str, float]] | None = None) -> plt.Figure:
    """One panel per metric (columns of ``members``, one row per seed): each seed's score as a dot, the
    ensemble's as a diamond, and reference methods (``{label: {metric: value}}``) as dashed lines."""
    metrics = list(members.columns)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    rng = np.random.default_rng(0)  # horizontal jitter only, so equal scores stay visible
    for ax, metric in zip(axes.flat, metrics):
        values = members[metric].to_numpy(dtype=float)
        ax.scatter(rng.uniform(-0.15, 0.15, len(values)), values, color="tab:blue", alpha=0.7,
                   label=f"single seeds (n={len(values)})")
        ax.scatter([0.5], [ensemble[metric]], marker="D", s=60, color="tab:red", label="ensemble (mean of probabilities)")
        for i, (label, scores) in enumerate((reference or {}).items()):
            if metric in scores:
                ax.axhline(scores[metric], color=f"C{i + 2}", linestyle="--", label=label)
        ax.set_xlim(-0.5, 1.0)
        ax.set_xticks([])
        ax.set_title(metric)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


# --------------------------------------------------------------------------- preprocessing and features (01, 02)


def disc_overlay(image: Image.Image | np.ndarray, disc, *, title: str = "", ax: plt.Axes | None = None) -> plt.Figure:
    """An image with a found fundus disc drawn on it (``disc``: anything with ``x``, ``y``, ``radius``; or None)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.5, 3.5))
    else:
        fig = ax.figure
    ax.imshow(image)
    if disc is not None:
        ax.add_patch(plt.Circle((disc.x, disc.y), disc.radius, fill=False, color="yellow", linewidth=1.5))
        ax.plot([disc.x], [disc.y], "+", color="yellow", markersize=10)
    ax.set_title(title or ("disc found" if disc is not None else "no disc found"), fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def feature_maps(image: Image.Image | np.ndarray, maps: dict[str, np.ndarray], *, suptitle: str | None = None,
                 size: float = 2.4) -> plt.Figure:
    """An image beside greyscale maps computed from it (e.g. a HOG drawing, LBP codes), each titled."""
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(size * (len(maps) + 1), size + (0.4 if suptitle else 0)),
                             squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input", fontsize=9)
    for ax, (name, values) in zip(axes[0, 1:], maps.items()):
        ax.imshow(values, cmap="gray")
        ax.set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def score_bars(scores: pd.DataFrame, *, title: str, xlabel: str, reference: float | None = None,
               reference_label: str = "") -> plt.Figure:
    """Horizontal bars of ``scores["mean"]`` (with ``scores["std"]`` as error bars), one per row label."""
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(scores) + 1.3))
    ax.barh(scores.index.astype(str)[::-1], scores["mean"].to_numpy()[::-1],
            xerr=scores["std"].to_numpy()[::-1] if "std" in scores else None, color="tab:blue", capsize=3)
    if reference is not None:
        ax.axvline(reference, color="tab:red", linestyle="--", label=reference_label or None)
        if reference_label:
            ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def grid_search_heatmap(search, x: str, y: str, *, title: str) -> plt.Figure:
    """Mean cross-validation score over two parameters of a fitted ``GridSearchCV``, others at their best value."""
    import seaborn as sns

    results = pd.DataFrame(search.cv_results_["params"])
    results["score"] = search.cv_results_["mean_test_score"]
    for name, best in search.best_params_.items():
        if name not in (x, y):
            results = results[results[name].map(lambda v, b=best: v == b)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = results.assign(**{x: results[x].map(fmt), y: results[y].map(fmt)}).pivot_table(
        index=y, columns=x, values="score", sort=False)
    fig, ax = plt.subplots(figsize=(0.9 * table.shape[1] + 2.5, 0.5 * table.shape[0] + 1.6))
    sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "mean CV score"})
    ax.set_xlabel(x.split("__")[-1])
    ax.set_ylabel(y.split("__")[-1])
    ax.set_title(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- tags (05)


def tag_grid(images: Sequence[Image.Image | np.ndarray], true: pd.DataFrame, predicted: pd.DataFrame,
             fields: Sequence[str], *, ncols: int = 5, size: float = 2.4, suptitle: str | None = None) -> plt.Figure:
    """Images with their generated tags underneath, one line per field: green when right, red with the true tag
    in brackets when wrong, grey when the true tag is unknown (blank)."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    text_height = 0.17 * len(fields)  # inches for the tag lines under each image
    fig = plt.figure(figsize=(size * ncols, (size + text_height) * nrows + (0.4 if suptitle else 0)))
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[size, text_height] * nrows, hspace=0.04, wspace=0.08)
    for i, img in enumerate(images):
        row, col = divmod(i, ncols)
        ax = fig.add_subplot(grid[2 * row, col])
        ax.imshow(img)
        ax.axis("off")
        text_ax = fig.add_subplot(grid[2 * row + 1, col])
        text_ax.axis("off")
        for j, field in enumerate(fields):
            t, p = str(true[field].iloc[i]), str(predicted[field].iloc[i])
            colour = "grey" if t == "" else "tab:green" if t == p else "tab:red"
            text = f"{field}: {p}" + ("" if t in ("", p) else f" ({t})")
            text_ax.text(0.0, 1.0 - j / len(fields), text, transform=text_ax.transAxes, fontsize=7, color=colour,
                         va="top")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


# --------------------------------------------------------------------------- results (06)


def grouped_bars(table: pd.DataFrame, *, title: str, ylabel: str) -> plt.Figure:
    """Bars grouped by the rows of ``table`` (e.g. tag fields), one colour per column (e.g. method)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(table)), 3.6))
    table.plot.bar(ax=ax, width=0.8, rot=30)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def runtime_bars(runtime: pd.DataFrame, *, budget_s: float | None = None, budget_mb: float | None = None
                 ) -> plt.Figure:
    """Wall seconds and peak memory per notebook (``runtime`` columns ``seconds``, ``peak_rss_mb``), with optional
    limit lines (``budget_s``, ``budget_mb``; None draws none)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(runtime) + 1.6), sharey=True)
    for ax, column, budget, label in ((axes[0], "seconds", budget_s, "wall time (s)"),
                                      (axes[1], "peak_rss_mb", budget_mb, "peak memory (MB)")):
        ax.barh(runtime.index[::-1], runtime[column].values[::-1], color=OURS_COLOUR)
        ax.set_xlabel(label)
        if budget is not None:
            ax.axvline(budget, color="tab:red", linestyle="--", label=f"limit {budget:g}")
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.suptitle("What each notebook cost")
    fig.tight_layout()
    return fig
