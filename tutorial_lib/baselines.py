"""The SVM baselines on handcrafted features: notebook 02's classical pipeline, done as well as the tutorial can.

The descriptors are in :mod:`tutorial_lib.handcrafted`; this module trains and tunes on them.

- :func:`svm_pipeline` (``StandardScaler`` + RBF ``SVC``), :func:`tune_svm` (a stratified, optionally
  grouped ``GridSearchCV``), :func:`compare_feature_sets`, :func:`cv_table`,
  :func:`tempered_class_weight` and :func:`quadratic_kappa_scorer`.
- The catalogue-tag baseline: :func:`catalogue_split` (shared with the tagging notebook) and
  :func:`fit_tag_svm` (an independent SVM per tag field, :class:`TagSVM`); its scores come from
  :func:`tutorial_lib.metrics.tag_metrics`.
- Notebook 02's recipe in one place, so that notebooks 02-05 compute the SVM row of every task the
  same way: :func:`baseline_features`, :func:`baseline_views`, :data:`DR_FEATURE_SETS`,
  :func:`compare_dr_feature_sets`, :func:`tune_baseline_svm` and :func:`svm_baseline` (all in one call).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from .handcrafted import HOG, ColourHistogram, FundusLesionStats, ImageFeatures, LBPHistogram, stack_features


# --------------------------------------------------------------------------- the SVM


def tempered_class_weight(y: Sequence[Any], power: float = 0.5) -> dict[Any, float]:
    """Class weights ``(n / (k * n_c)) ** power``: 0 is no weighting, 1 is scikit-learn's ``"balanced"``.

    ``power=0.5`` (square root) gives rare classes more say without making the SVM predict
    them as often as the common ones, a compromise between accuracy and balanced accuracy.
    """
    values, counts = np.unique(np.asarray(y), return_counts=True)
    return {v.item() if hasattr(v, "item") else v: float((len(y) / (len(values) * c)) ** power)
            for v, c in zip(values, counts)}


def svm_pipeline(*, class_weight: Any = None, random_state: int = 0):
    """``Pipeline(StandardScaler(), SVC(kernel="rbf"))``: every feature on the same scale, then an RBF SVM."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return Pipeline([("scale", StandardScaler()),
                     ("svc", SVC(kernel="rbf", class_weight=class_weight, random_state=random_state))])


def tune_svm(X: np.ndarray, y: np.ndarray, param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]], *,
             groups: np.ndarray | None = None, validate_on: np.ndarray | None = None, scoring: Any = "accuracy",
             n_splits: int = 5, random_state: int = 0, n_jobs: int = 1):
    """Grid-search :func:`svm_pipeline` with stratified ``n_splits``-fold cross-validation on ``(X, y)``.

    Parameter names address the pipeline's steps (``svc__C``, ``svc__gamma``, ``svc__class_weight``).
    With ``groups`` (from :func:`stack_features` with several views) the folds are stratified
    *and* grouped, so no image has a view on both sides of a split; ``validate_on`` (a boolean
    mask, e.g. the original views) keeps only those rows in the validation folds, so they are
    scored like the test split, which has no mirror images. Returns the fitted ``GridSearchCV``,
    whose ``best_estimator_`` is refitted on all of ``(X, y)``. Pass only training data: the
    test split is for the final numbers.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        cv: Any = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    else:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    if validate_on is not None:
        keep = np.asarray(validate_on, dtype=bool)
        cv = [(train, test[keep[test]]) for train, test in cv.split(X, y, groups)]
    search = GridSearchCV(svm_pipeline(random_state=random_state), param_grid, scoring=scoring, cv=cv,
                          n_jobs=n_jobs, refit=True, return_train_score=False, error_score="raise")
    return search.fit(X, y, groups=groups)


def compare_feature_sets(X: np.ndarray, y: np.ndarray, slices: Mapping[str, slice],
                         candidates: Mapping[str, Sequence[str]], *, scoring: Mapping[str, Any],
                         n_splits: int = 5, random_state: int = 0, n_jobs: int = 1, **svm_options: Any) -> pd.DataFrame:
    """Cross-validate :func:`svm_pipeline` on several subsets of the descriptors (columns ``slices``).

    ``candidates`` maps a label to descriptor names. Returns one row per candidate with the mean
    and standard deviation over the folds of every metric in ``scoring``: which descriptors help
    is a question for cross-validation on the training data, not for the test split.
    """
    from sklearn.model_selection import StratifiedKFold, cross_validate

    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    rows = {}
    for label, names in candidates.items():
        columns = np.concatenate([np.arange(X.shape[1])[slices[n]] for n in names])
        scores = cross_validate(svm_pipeline(random_state=random_state, **svm_options), X[:, columns], y, cv=cv,
                                scoring=dict(scoring), n_jobs=n_jobs)
        row: dict[str, Any] = {"features": len(columns)}
        for metric in scoring:
            row[f"{metric} mean"] = scores[f"test_{metric}"].mean()
            row[f"{metric} std"] = scores[f"test_{metric}"].std()
        rows[label] = row
    return pd.DataFrame(rows).T.astype({"features": int})


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {v:.2f}" for k, v in value.items()) + "}"
    return "none" if value is None else value


def cv_table(search) -> pd.DataFrame:
    """The grid search's results as a table: one row per parameter setting, best first."""
    results = search.cv_results_
    params = pd.DataFrame([{k.split("__")[-1]: _short(v) for k, v in p.items()} for p in results["params"]])
    scores = pd.DataFrame({"mean CV score": results["mean_test_score"], "std": results["std_test_score"],
                           "fit seconds": results["mean_fit_time"]})
    return pd.concat([params, scores], axis=1).sort_values("mean CV score", ascending=False).reset_index(drop=True)


def quadratic_kappa_scorer():
    """A scorer for ``GridSearchCV``: quadratic weighted kappa, the DR grading metric."""
    from sklearn.metrics import make_scorer

    from .metrics import quadratic_weighted_kappa

    return make_scorer(quadratic_weighted_kappa)


# --------------------------------------------------------------------------- catalogue tags


def catalogue_split(tag_data, seed: int = 0, test_fraction: float = 0.2, min_type_count: int = 20,
                    group_pattern: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """The train/test split of the tag catalogue that every tagging method uses.

    Rows whose ``articleType`` has fewer than ``min_type_count`` images in the whole table are
    dropped (too few to learn or to test), then a seeded split stratified by ``articleType``
    holds out ``test_fraction``. Returns ``(train, test, dropped_counts)``, the last being the
    number of images of each dropped article type, so the notebook can say what it left out.
    ``group_pattern`` (see :func:`tutorial_lib.data.group_ids`, searched in the image paths below
    the images folder) adds a ``group`` column and keeps each group on one side.
    """
    import os

    from .data import group_ids, stratified_split

    table = tag_data.table if hasattr(tag_data, "table") else tag_data
    counts = table["articleType"].value_counts()
    rare = counts[counts < min_type_count]
    kept = table[~table["articleType"].isin(rare.index)]
    if group_pattern:
        root = Path(os.path.commonpath([str(Path(p).parent) for p in kept["path"]]))
        kept = kept.assign(group=group_ids(list(kept["path"]), group_pattern, root))
    keep, held = stratified_split(np.arange(len(kept)), kept["articleType"].to_numpy(), test_fraction, seed,
                                  kept["group"].to_numpy() if group_pattern else None)
    train, test = kept.iloc[keep], kept.iloc[held]
    return train.sort_index(), test.sort_index(), rare.rename("images dropped")


@dataclass(repr=False, eq=False)
class TagSVM(BaseEstimator):
    """Independent SVMs, one per tag field, on shared standardised features.

    Each field is a multi-class RBF SVM (``C``, ``gamma``) and is predicted on its own, with
    no knowledge of the other fields: the baseline that a tagger which writes tags as a
    sequence (notebook 05) has to beat. ``class_weight`` is ``None``, ``"balanced"`` or
    ``"tempered"`` (:func:`tempered_class_weight`, computed per field). Rows with a blank
    value in a field are left out of that field's training; a field with one value becomes
    a constant. ``fit(X, tags)`` takes a feature matrix and a table with one column per field.
    """

    fields: Sequence[str]
    C: float = 10.0
    gamma: Any = "scale"
    class_weight: str | None = "tempered"
    random_state: int = 0
    n_jobs: int = 1

    def fit(self, X: np.ndarray, tags: pd.DataFrame) -> "TagSVM":
        from joblib import Parallel, delayed
        from sklearn.preprocessing import StandardScaler

        self.scaler_ = StandardScaler().fit(X)
        Z = self.scaler_.transform(X)
        tags = tags.reset_index(drop=True)
        fitted = Parallel(n_jobs=self.n_jobs)(delayed(_fit_field)(
            Z, tags[f].to_numpy(dtype=str), self.C, self.gamma, self.class_weight, self.random_state)
            for f in self.fields)
        self.models_ = dict(zip(self.fields, fitted))
        return self

    def predict(self, X: np.ndarray) -> pd.DataFrame:
        """One column per field with the predicted value."""
        Z = self.scaler_.transform(X)
        return pd.DataFrame({f: self.models_[f].predict(Z) for f in self.fields})


def _fit_field(Z: np.ndarray, values: np.ndarray, C: float, gamma: Any, class_weight: str | None, random_state: int):
    from sklearn.dummy import DummyClassifier
    from sklearn.svm import SVC

    known = values != ""
    if len(set(values[known])) < 2:
        return DummyClassifier(strategy="most_frequent").fit(Z[known], values[known])
    weights = tempered_class_weight(values[known]) if class_weight == "tempered" else class_weight
    return SVC(C=C, gamma=gamma, class_weight=weights, random_state=random_state).fit(
        Z[known], values[known])


def fit_tag_svm(X_train: np.ndarray, tags_train: pd.DataFrame, fields: Sequence[str], *, C: float = 10.0,
                gamma: Any = "scale", class_weight: str | None = "tempered", random_state: int = 0,
                n_jobs: int = 1) -> TagSVM:
    """Fit a :class:`TagSVM` on training features and their tag table."""
    return TagSVM(list(fields), C=C, gamma=gamma, class_weight=class_weight, random_state=random_state,
                  n_jobs=n_jobs).fit(X_train, tags_train)


# --------------------------------------------------------------------------- notebook 02's recipe, in one place

#: The descriptor subsets notebook 02 compares by cross-validation on fundus photographs.
DR_FEATURE_SETS: dict[str, list[str]] = {
    "HOG + colour (the plain baseline)": ["hog", "colour"],
    "lesion statistics": ["lesions"],
    "lesions + LBP + colour": ["lesions", "lbp", "colour"],
    "all four": ["hog", "lbp", "colour", "lesions"],
}


def baseline_features(task: str, *, n_jobs: int = 2, cache_dir: str | Path | None = None,
                      progress: bool = False) -> ImageFeatures:
    """Notebook 02's descriptors for ``task`` (``"dr"``: fundus photographs; anything else: photos).

    ``"dr"``: fundus crop to 96 px, HOG (16 px cells, 2x2 blocks), LBP at radii 1 and 2 on a 2x2
    grid, a L*a*b* histogram of the disc and lesion statistics. Photos: a 96 px resize, HOG (16 px
    cells, 3x3 blocks), LBP at radii 1 and 2, a L*a*b* histogram. Notebooks 02-05 all call this, so
    the SVM row of every task is computed from the same features whichever notebook computes it.
    """
    from . import preprocess as pp

    if task == "dr":
        descriptors = [("hog", HOG(pixels_per_cell=16, cells_per_block=2)),
                       ("lbp", LBPHistogram(scales=((8, 1), (8, 2)), grid=2)),
                       ("colour", ColourHistogram(space="lab", bins=(4, 6, 6), region="disc")),
                       ("lesions", FundusLesionStats())]
        preprocess = [pp.FundusCrop(96)]
    else:
        descriptors = [("hog", HOG(pixels_per_cell=16, cells_per_block=3)),
                       ("lbp", LBPHistogram(scales=((8, 1), (8, 2)), grid=1)),
                       ("colour", ColourHistogram(space="lab", bins=(4, 6, 6)))]
        preprocess = [pp.Resize(96)]
    return ImageFeatures(descriptors, preprocess=preprocess, size=96, n_jobs=n_jobs, cache_dir=cache_dir,
                         progress=progress)


def baseline_views(task: str) -> list[Any]:
    """The views the SVM trains on: fundus photos as they are; photos also mirrored (a free augmentation)."""
    from . import preprocess as pp

    return [None] if task == "dr" else [None, pp.View("hflip")]


def compare_dr_feature_sets(X: np.ndarray, y: np.ndarray, slices: Mapping[str, slice], *, quick: bool = False,
                            seed: int = 0, n_jobs: int = 1) -> pd.DataFrame:
    """Notebook 02's comparison of :data:`DR_FEATURE_SETS` (QWK and accuracy, tempered class weights)."""
    return compare_feature_sets(X, y, slices, DR_FEATURE_SETS,
                                scoring={"qwk": quadratic_kappa_scorer(), "accuracy": "accuracy"},
                                n_splits=2 if quick else 5, random_state=seed, n_jobs=n_jobs,
                                class_weight=tempered_class_weight(y))


def tune_baseline_svm(task: str, X: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
                      quick: bool = False, seed: int = 0, n_jobs: int = 1):
    """Notebook 02's grid search for ``task`` on the development set ``(X, y)`` (train + validation).

    ``"dr"``: C in {0.3, 1, 3}, gamma in {0.5, 1, 2} / n_features, three class weightings, QWK, 5
    folds. Photos: C in {3, 10} with tempered class weights, accuracy, 3 folds grouped by photo
    (``groups`` from :func:`stack_features`) and scored on the photos as taken (the first view).
    """
    weights = tempered_class_weight(y)
    if task == "dr":
        n_features = X.shape[1]
        grid = {"svc__C": [1.0] if quick else [0.3, 1.0, 3.0],
                "svc__gamma": [1 / n_features] if quick else [0.5 / n_features, 1 / n_features, 2 / n_features],
                "svc__class_weight": [None, weights, "balanced"]}
        return tune_svm(X, y, grid, scoring=quadratic_kappa_scorer(), n_splits=2 if quick else 5,
                        random_state=seed, n_jobs=n_jobs)
    grid = {"svc__C": [3.0] if quick else [3.0, 10.0], "svc__class_weight": [weights]}
    original = None
    if groups is not None:  # stack_features puts every image's first view (as taken) first
        original = np.arange(len(y)) < len(np.unique(groups))
    return tune_svm(X, y, grid, groups=groups, validate_on=original, scoring="accuracy",
                    n_splits=2 if quick else 3, random_state=seed, n_jobs=n_jobs)


def svm_baseline(data, *, task: str, seed: int = 0, quick: bool = False, n_jobs: int = 2,
                 cache_dir: str | Path | None = None):
    """Notebook 02's classical pipeline in one call, for any classification dataset (e.g. your ``DATA_DIR``).

    The same steps as notebook 02, through the same functions: :func:`baseline_features` on train +
    validation (under :func:`baseline_views`), for ``"dr"`` the descriptor subset chosen by
    :func:`compare_dr_feature_sets`, :func:`tune_baseline_svm`, then the test-split metrics. On the
    same data and seed it records the figures notebook 02 records. Returns a namespace with
    ``metrics``, ``predicted`` (test split), ``search`` and ``features`` (the descriptor names used).
    """
    import warnings
    from types import SimpleNamespace

    from . import preprocess as pp
    from .metrics import classification_metrics

    extractor = baseline_features(task, n_jobs=n_jobs, cache_dir=cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pp.NoDiscFoundWarning)
        X_dev, y_dev, groups = stack_features(extractor, [data.train, data.val], views=baseline_views(task))
        X_test = extractor.transform(data.test)
    names = [name for name, _ in extractor.descriptors]
    columns = np.arange(X_dev.shape[1])
    if task == "dr":
        slices = extractor.feature_slices(data.train.image(0))
        chosen = compare_dr_feature_sets(X_dev, y_dev, slices, quick=quick, seed=seed, n_jobs=n_jobs)["qwk mean"].idxmax()
        names = DR_FEATURE_SETS[chosen]
        columns = np.concatenate([columns[slices[n]] for n in names])
    search = tune_baseline_svm(task, X_dev[:, columns], y_dev, groups=None if task == "dr" else groups, quick=quick,
                               seed=seed, n_jobs=n_jobs)
    predicted = search.best_estimator_.predict(X_test[:, columns])
    metrics = classification_metrics(data.test.labels, predicted, ordinal=task == "dr")
    return SimpleNamespace(metrics=metrics, predicted=predicted, search=search, features=names)
