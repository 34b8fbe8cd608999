"""Figures say what they show: labelled colour bars, the talk's bars apart from ours, titles that do not overlap."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import tutorial_lib.plots as tlplot  # noqa: E402


def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


@pytest.mark.parametrize("normalize, label", [(True, "share of the true class's images (row)"), (False, "images")])
def test_confusion_matrix_colour_bar_says_what_the_colour_means(normalize, label):
    fig = tlplot.confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], title="t", normalize=normalize)
    colour_bar = fig.axes[-1]
    assert colour_bar.get_ylabel() == label
    matplotlib.pyplot.close(fig)


def test_method_comparison_draws_the_talk_apart_and_keeps_the_legend_off_the_bars():
    table = pd.DataFrame({"accuracy": [0.74, 0.93, 0.72]}, index=["svm", "finetune_top", "talk: svm"])
    fig = tlplot.method_comparison(table, "accuracy", title="t", reference={"a line": 0.9})
    ax = fig.axes[0]
    colours = {bar.get_y(): mcolors.to_hex(bar.get_facecolor()) for bar in ax.patches}
    ours, talk = mcolors.to_hex(tlplot.OURS_COLOUR), mcolors.to_hex(tlplot.TALK_COLOUR)
    assert sorted(colours.values()) == sorted([ours, ours, talk])
    renderer = _renderer(fig)
    legend = fig.legends[0]
    below = ax.get_window_extent(renderer).y0 - ax.xaxis.label.get_window_extent(renderer).height
    assert legend.get_window_extent(renderer).y1 < below  # below the axes and their label, over no bar
    assert "the talk (its own data)" in [t.get_text() for t in legend.get_texts()]
    matplotlib.pyplot.close(fig)


def test_image_grid_leaves_room_for_two_line_titles():
    images = [np.zeros((8, 8, 3), np.uint8)] * 4
    fig = tlplot.image_grid(images, ["first line\nsecond line"] * 4, ncols=2, size=1.0, suptitle="a suptitle")
    renderer = _renderer(fig)
    top_row, bottom_row = fig.axes[0], fig.axes[2]
    title = bottom_row.title.get_window_extent(renderer)
    assert title.y1 <= top_row.get_window_extent(renderer).y0 + 1  # the title sits between the rows
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert suptitle.y0 >= top_row.title.get_window_extent(renderer).y1 - 1
    matplotlib.pyplot.close(fig)


def test_training_curves_show_the_score_that_picks_the_epoch():
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "train_accuracy": [0.5, 0.6],
                            "val_accuracy": [0.4, 0.5], "val_score": [0.6, 0.55]})
    fig = tlplot.training_curves(history, title="t")
    assert "validation score (picks the epoch)" in [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    same = tlplot.training_curves(history.assign(val_score=history["val_accuracy"]), title="t")
    assert len(same.axes[1].get_lines()) == 2  # when the score is the accuracy, no second line
    matplotlib.pyplot.close("all")
