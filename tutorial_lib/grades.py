"""Ordinal decisions for graded labels (diabetic retinopathy grades 0-4), notebook 03.

A grade is ordered: predicting 3 for a 4 is a smaller error than predicting 0. The
expected grade under the predicted distribution is a continuous score that respects the
order; cut points fitted on the validation split to maximise quadratic weighted kappa turn
it back into grades.
"""
from __future__ import annotations

import warnings

import numpy as np


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """The mean grade under the predicted distribution: a continuous score that respects the order."""
    return probs @ np.arange(probs.shape[1])


def fit_thresholds(scores: np.ndarray, y: np.ndarray, n_classes: int, *, rounds: int = 3,
                   max_candidates: int = 40) -> np.ndarray:
    """Cut points on a continuous grade score that maximise quadratic weighted kappa on ``(scores, y)``.

    Coordinate search from the midpoints 0.5, 1.5, ...: each cut point in turn moves to the
    best of (at most ``max_candidates``) points halfway between neighbouring scores that lie
    strictly between its neighbours' cut points, and stays where it is unless one scores
    higher. So the result is always strictly increasing and never scores below the
    midpoints, for any scores (ties, a constant, extreme values) and labels (classes absent).
    Fit them on the validation split, never on the test split.
    """
    from .metrics import quadratic_weighted_kappa

    big = np.finfo(np.float64).max
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64).ravel(), nan=0.0, posinf=big, neginf=-big)
    y = np.asarray(y).ravel()
    thresholds = np.arange(max(n_classes - 1, 0), dtype=np.float64) + 0.5
    values = np.unique(scores)
    midpoints = np.r_[values[:-1] / 2 + values[1:] / 2, values[:1] - 1.0, values[-1:] + 1.0]  # halves: no overflow

    def score(cuts: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one predicted grade for all: kappa is 0/0
            kappa = quadratic_weighted_kappa(y, np.digitize(scores, cuts)) if len(y) else float("nan")
        return kappa if np.isfinite(kappa) else -np.inf

    best = score(thresholds)
    for _ in range(rounds):
        for i in range(len(thresholds)):
            lo = thresholds[i - 1] if i else -np.inf
            hi = thresholds[i + 1] if i + 1 < len(thresholds) else np.inf
            candidates = np.unique(midpoints[(midpoints > lo) & (midpoints < hi)])
            if candidates.size > max_candidates:
                candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, max_candidates), method="nearest"))
            for c in candidates:
                trial = thresholds.copy()
                trial[i] = c
                kappa = score(trial)
                if kappa > best:
                    best, thresholds = kappa, trial
    return thresholds


def apply_thresholds(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Grades from scores and cut points."""
    return np.digitize(scores, thresholds)


def ordinal_predictions(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Grades from class probabilities by two rules: ``argmax`` and ``thresholds``.

    ``thresholds`` cuts the expected grade at points fitted on the validation split to
    maximise quadratic weighted kappa (so its validation kappa is optimistic; the test
    split plays no part). Returns ``{rule: {split: grades}}`` and the thresholds.
    """
    n_classes = probs["val"].shape[1]
    thresholds = fit_thresholds(expected_grade(probs["val"]), labels["val"], n_classes)
    return {
        "argmax": {split: p.argmax(1) for split, p in probs.items()},
        "thresholds": {split: apply_thresholds(expected_grade(p), thresholds) for split, p in probs.items()},
    }, thresholds
