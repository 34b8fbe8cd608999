"""tutorial_lib.baselines: the SVM helpers, the tag baseline and notebook 02's recipe shared by notebooks 02-05."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.class_weight import compute_class_weight

import tutorial_lib as tl
import tutorial_lib.baselines as tlb
import tutorial_lib.metrics as tlmet


# --------------------------------------------------------------------------- the SVM


def test_tempered_class_weight():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    balanced = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    assert list(tlb.tempered_class_weight(y, power=1.0).values()) == pytest.approx(list(balanced))
    assert list(tlb.tempered_class_weight(y, power=0.0).values()) == pytest.approx([1, 1, 1])
    assert list(tlb.tempered_class_weight(y).values()) == pytest.approx(list(np.sqrt(balanced)))


def test_tune_svm_with_groups_keeps_views_together():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int)
    X2, y2, groups = np.vstack([X, X + 0.01]), np.tile(y, 2), np.tile(np.arange(60), 2)
    search = tlb.tune_svm(X2, y2, {"svc__C": [0.1, 1.0]}, groups=groups, n_splits=3)
    for train, test in search.cv.split(X2, y2, groups):
        assert not set(groups[train]) & set(groups[test])
    originals = np.arange(120) < 60
    scored_on_originals = tlb.tune_svm(X2, y2, {"svc__C": [1.0]}, groups=groups, validate_on=originals, n_splits=3)
    for train, test in scored_on_originals.cv:
        assert originals[test].all() and not set(groups[train]) & set(groups[test])
        assert len(test) == len(set(groups[test]))
    table = tlb.cv_table(search)
    assert list(table.columns[:1]) == ["C"] and len(table) == 2 and search.best_score_ > 0.8
    scorer = tlb.quadratic_kappa_scorer()
    assert scorer(search.best_estimator_, X, y) > 0.5


# --------------------------------------------------------------------------- catalogue tags


@pytest.fixture(scope="module")
def catalogue():
    return tl.data.load_tag_dataset("fashion")


def test_catalogue_split(catalogue):
    train, test, dropped = tlb.catalogue_split(catalogue, seed=0)
    counts = catalogue.table["articleType"].value_counts()
    assert set(dropped.index) == set(counts[counts < 20].index) and (dropped < 20).all()
    assert len(train) + len(test) + dropped.sum() == len(catalogue)
    assert not set(train.index) & set(test.index)
    assert len(test) == pytest.approx(0.2 * (len(train) + len(test)), abs=1)
    assert set(test["articleType"]) <= set(train["articleType"])
    again, _, _ = tlb.catalogue_split(catalogue, seed=0)
    other, _, _ = tlb.catalogue_split(catalogue, seed=1)
    assert again.index.equals(train.index) and not other.index.equals(train.index)


def test_tag_svm_fits_each_field():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 6))
    tags = pd.DataFrame({"colour": np.where(X[:, 0] > 0, "red", "blue"),
                         "kind": np.array(["shoe", "bag", "hat"])[np.argmax(X[:, 1:4], axis=1)],
                         "season": ["all"] * 90})
    tags.loc[:4, "colour"] = ""  # blanks are left out of training
    model = tlb.fit_tag_svm(X[:60], tags[:60], ["colour", "kind", "season"], C=10.0)
    assert set(vars(model)) >= {"scaler_", "models_"}
    pred = model.predict(X[60:])
    assert list(pred.columns) == ["colour", "kind", "season"] and len(pred) == 30
    assert (pred["season"] == "all").all() and set(pred["colour"]) <= {"red", "blue"}
    m = tlmet.tag_metrics(tags[60:], pred, ["colour", "kind"])
    assert m["field_accuracy"]["colour"] >= 0.7 and m["field_accuracy"]["kind"] >= 0.5


def test_notebooks_take_the_svm_recipe_from_the_library():
    """Notebook 02 builds no descriptors of its own: 02-05 all call baseline_features (the recipes had drifted)."""
    import nbformat

    root = tl.data.PROJECT_ROOT
    for name in ("02_feature_svm_baseline", "03_transfer_learning_dr", "04_transfer_learning_fashion", "05_tagging"):
        code = "\n".join(c.source for c in nbformat.read(root / "notebooks" / f"{name}.ipynb", as_version=4).cells
                         if c.cell_type == "code")
        for constructor in ("ImageFeatures(", ".HOG(", "LBPHistogram(", "ColourHistogram(", "tune_svm("):
            assert constructor not in code, f"{name} builds its own {constructor}"


@pytest.mark.slow
def test_svm_baseline_records_what_notebook_02_records(tmp_path):
    """03 run alone computes the DR SVM row itself: it must equal notebook 02's (the reference run's) figures."""
    data = tl.data.load_dataset("retinamnist")
    result = tlb.svm_baseline(data, task="dr", seed=0, n_jobs=2, cache_dir=tmp_path)
    recorded = tl.report.reference_results()["dr"]["methods"]["svm"]
    assert result.features == tlb.DR_FEATURE_SETS["lesion statistics"]
    assert result.metrics == pytest.approx({k: recorded[k] for k in result.metrics}, abs=1e-12)
