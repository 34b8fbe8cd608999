"""tutorial_lib.metrics against hand-computed values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import tutorial_lib.metrics as tlmet


def test_quadratic_kappa_known_values():
    assert tlmet.quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    # off by one costs less than off by three
    near = tlmet.quadratic_weighted_kappa([0, 1, 2, 3, 4], [1, 1, 2, 3, 4])
    far = tlmet.quadratic_weighted_kappa([0, 1, 2, 3, 4], [4, 1, 2, 3, 4])
    assert 0 < far < near < 1
    # hand computation for y=[0,1], p=[1,1] with 2 classes: observed weight 1/2, expected 1/2 -> kappa 0
    assert tlmet.quadratic_weighted_kappa([0, 1], [1, 1]) == pytest.approx(0.0)


def test_classification_metrics():
    m = tlmet.classification_metrics([0, 0, 0, 1], [0, 0, 1, 1], ordinal=True)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert set(m) == {"accuracy", "balanced_accuracy", "macro_f1", "qwk"}
    assert "qwk" not in tlmet.classification_metrics([0, 1], [0, 1])


def test_confusion_keeps_unseen_classes():
    matrix = tlmet.confusion([0, 1], [0, 0], n_classes=3)
    assert matrix.shape == (3, 3) and matrix[1, 0] == 1 and matrix.sum() == 2


def test_majority_baseline_answers_the_commonest_training_class():
    y_train = [0, 0, 0, 1, 2]
    y_true = [0, 1, 2, 0]
    scores = tlmet.majority_baseline(y_train, y_true, ordinal=True)
    assert scores["accuracy"] == 0.5  # two of the four test labels are class 0
    assert scores["balanced_accuracy"] == pytest.approx(1 / 3)
    assert scores["qwk"] == 0.0  # a constant answer agrees no better than chance
    assert tlmet.majority_baseline([2, 2, 1], [1, 2])["accuracy"] == 0.5  # class 2 is the majority, not class 0
    with pytest.raises(ValueError, match="y_train is empty"):
        tlmet.majority_baseline([], [0])


def test_tag_metrics_known_values():
    fields = ["colour", "kind"]
    true = pd.DataFrame({"colour": ["red", "blue", "red", ""], "kind": ["shoe", "shoe", "bag", "bag"]})
    pred = pd.DataFrame({"colour": ["red", "red", "red", "blue"], "kind": ["shoe", "bag", "bag", "bag"]})
    m = tlmet.tag_metrics(true, pred, fields)
    assert m["field_accuracy"] == {"colour": pytest.approx(2 / 3), "kind": pytest.approx(3 / 4)}
    assert m["exact_match"] == pytest.approx(3 / 4)  # row 1 wrong; the blank colour of row 3 is unknown
    assert m["micro_f1"] == pytest.approx(5 / 7)  # 7 known tags, 5 right; as many predicted as true
    # per tag F1: colour=red 0.8, colour=blue 0, kind=shoe 2/3, kind=bag 0.8
    assert m["macro_f1"] == pytest.approx((0.8 + 0 + 2 / 3 + 0.8) / 4)
    perfect = tlmet.tag_metrics(true, true, fields)
    assert perfect["micro_f1"] == perfect["macro_f1"] == perfect["exact_match"] == 1.0
