"""Metrics used throughout the tutorial, computed with scikit-learn.

Every notebook reports through :func:`classification_metrics` (classes) or :func:`tag_metrics`
(catalogue tags), so the numbers in ``results.json`` mean the same thing everywhere.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix,
                             f1_score)

if TYPE_CHECKING:
    import pandas as pd


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Cohen's kappa with quadratic weights: agreement on an ordinal scale (1 perfect, 0 chance).

    Predicting grade 3 for a grade-4 eye costs less than predicting grade 0.
    """
    return float(cohen_kappa_score(y_true, y_pred, weights="quadratic"))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], *, ordinal: bool = False) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1; plus quadratic weighted kappa when the classes are ordered."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if ordinal:
        metrics["qwk"] = quadratic_weighted_kappa(y_true, y_pred)
    return metrics


def majority_baseline(y_train: Sequence[int], y_true: Sequence[int], *, ordinal: bool = False) -> dict[str, float]:
    """The metrics of always answering the most frequent training class: the floor every model must clear.

    On imbalanced data this scores a high accuracy (RetinaMNIST: grade 0; Kaggle EyePACS: 73.5 % of its
    training photos) with a kappa of 0, which is why notebook 03 reports kappa beside accuracy.
    """
    y_train = np.asarray(y_train)
    if y_train.size == 0:
        raise ValueError("majority_baseline needs at least one training label (y_train is empty)")
    majority = np.bincount(y_train).argmax()
    return classification_metrics(y_true, np.full(len(y_true), majority), ordinal=ordinal)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted), all classes present even if unseen."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def tag_metrics(true_table: pd.DataFrame, pred_table: pd.DataFrame, fields: Sequence[str]) -> dict[str, Any]:
    """How well predicted tags match the true ones.

    Each image has one ``field=value`` tag per field. Returns ``field_accuracy`` (per field),
    ``micro_f1`` and ``macro_f1`` over all ``field=value`` tags (macro: the unweighted mean over
    every tag that is true or predicted somewhere, so rare tags count as much as common ones),
    and ``exact_match`` (all fields right). A blank true value is unknown: that field of that
    image is left out of the field's accuracy and of the F1 scores, and does not break an exact match.
    """
    from sklearn.preprocessing import MultiLabelBinarizer

    true = true_table[list(fields)].reset_index(drop=True).astype(str)
    pred = pred_table[list(fields)].reset_index(drop=True).astype(str)
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true rows but {len(pred)} predicted rows.")
    known = true != ""
    correct = (true == pred) | ~known
    field_accuracy = {f: float((true[f] == pred[f])[known[f]].mean()) if known[f].any() else float("nan")
                      for f in fields}
    true_tags = [{f"{f}={true.at[i, f]}" for f in fields if known.at[i, f]} for i in range(len(true))]
    pred_tags = [{f"{f}={pred.at[i, f]}" for f in fields if known.at[i, f]} for i in range(len(true))]
    binarizer = MultiLabelBinarizer().fit(true_tags + pred_tags)
    y_true, y_pred = binarizer.transform(true_tags), binarizer.transform(pred_tags)
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "exact_match": float(correct.all(axis=1).mean()),
        "field_accuracy": field_accuracy,
    }
