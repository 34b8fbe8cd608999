"""tutorial_lib.features: descriptors with known answers, the cache, the SVM helpers and the tag baseline."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.utils.class_weight import compute_class_weight

import tutorial_lib as tl
import tutorial_lib.features as tlf
import tutorial_lib.preprocess as tlp

DESCRIPTORS = [tlf.HOG(), tlf.LBPHistogram(), tlf.ColourHistogram(), tlf.FundusLesionStats()]


@pytest.fixture(scope="module")
def retina_images():
    return tl.data.load_dataset("retinamnist").train.images[:24]  # (24, 28, 28, 3) uint8


def flat(colour=(200, 30, 30), size=48) -> np.ndarray:
    return np.full((size, size, 3), colour, dtype=np.uint8)


# --------------------------------------------------------------------------- descriptors


def test_descriptors_follow_sklearn_conventions():
    for descriptor in DESCRIPTORS + [tlf.ImageFeatures([("hog", tlf.HOG())])]:
        params = descriptor.get_params(deep=False)
        assert vars(descriptor) == params  # __init__ stores its arguments and nothing else
        twin = clone(descriptor)
        assert twin.get_params(deep=False).keys() == params.keys()
        assert descriptor.fit([flat()]) is descriptor
        assert not [k for k in vars(descriptor) if k.endswith("_")]  # stateless: nothing learned
    changed = clone(tlf.HOG()).set_params(pixels_per_cell=16)
    assert changed.pixels_per_cell == 16


def test_descriptor_outputs_are_finite_fixed_length(retina_images):
    for descriptor in DESCRIPTORS:
        X = descriptor.fit_transform(retina_images)
        assert X.shape[0] == len(retina_images) and X.dtype == np.float32 and np.isfinite(X).all()


def test_hog_of_a_flat_image_is_zero_and_length_matches_the_formula():
    features = tlf.HOG(orientations=9, pixels_per_cell=8, cells_per_block=2).describe(flat(size=48))
    assert features.shape == ((48 // 8 - 1) ** 2 * 2 * 2 * 9,) and not features.any()


def test_hog_sees_an_edge():
    image = flat((0, 0, 0))
    image[:, 24:] = 255
    assert tlf.HOG().describe(image).max() > 0.1


def test_colour_histogram_of_one_colour_has_one_full_bin():
    hist = tlf.ColourHistogram(space="rgb", bins=(4, 4, 4), power=1.0).describe(flat((250, 10, 10)))
    assert hist.sum() == pytest.approx(1.0) and hist.max() == 1.0 and np.argmax(hist) == 3 * 16
    hsv = tlf.ColourHistogram(power=0.5).describe(flat((250, 10, 10)))
    assert hsv.max() == 1.0 and (hsv > 0).sum() == 1


def test_colour_histogram_disc_region_ignores_the_corners():
    image = flat((0, 0, 0))
    image[20:28, 20:28] = (250, 250, 250)  # white centre, black corners
    everything = tlf.ColourHistogram(space="rgb", bins=(2, 2, 2), power=1.0).describe(image)
    disc = tlf.ColourHistogram(space="rgb", bins=(2, 2, 2), power=1.0, region="disc", keep=0.15).describe(image)
    assert everything[0] > 0.9 and disc[-1] == pytest.approx(1.0)


def test_lbp_of_a_flat_image_is_all_flat_patterns():
    hist = tlf.LBPHistogram(scales=((8, 1),), grid=1, power=1.0).describe(flat())
    assert hist.shape == (10,) and hist[8] > 0.9  # code P, every neighbour >= centre (the border pixels aside)
    assert tlf.LBPHistogram(scales=((8, 1), (16, 2)), grid=2).describe(flat()).shape == (4 * (10 + 18),)


def test_lesion_stats_count_dark_spots():
    rng = np.random.default_rng(0)
    clean = np.full((96, 96, 3), (180, 90, 40), dtype=np.uint8)
    spotted = clean.copy()
    for y, x in rng.integers(30, 66, (12, 2)):
        spotted[y:y + 2, x:x + 2] = (90, 20, 10)  # dark red dots: micro-aneurysms
    describe = tlf.FundusLesionStats(thresholds=(8,)).describe
    dark_fraction = 7  # after the 7 quantiles
    assert describe(clean)[dark_fraction] == 0 and describe(spotted)[dark_fraction] > 0.002


def test_descriptor_pictures():
    image = flat()
    image[:, 24:] = 0
    assert tlf.hog_image(image).shape == (48, 48)
    codes = tlf.lbp_image(image)
    assert codes.shape == (48, 48) and codes.max() <= 9
    assert abs(tlf.local_contrast_image(flat())).max() < 1e-6


# --------------------------------------------------------------------------- batch extraction and cache


def test_image_features_on_real_images(retina_images, clothing):
    extractor = tlf.ImageFeatures([("hog", tlf.HOG(pixels_per_cell=16)), ("colour", tlf.ColourHistogram())],
                                  preprocess=[tlp.FundusCrop(48)], size=48)
    X = extractor.transform(retina_images)
    sizes = extractor.feature_sizes(retina_images[0])
    assert X.shape == (24, sum(sizes.values())) and sizes == {"hog": 36 * 4, "colour": 128}
    photos = tlf.ImageFeatures([("hog", tlf.HOG(pixels_per_cell=16))], size=48).transform(clothing.test.images[:5])
    assert photos.shape == (5, 36 * 4)


def test_parallel_extraction_matches_serial(retina_images):
    descriptors = [("lbp", tlf.LBPHistogram()), ("lesion", tlf.FundusLesionStats())]
    serial = tlf.ImageFeatures(descriptors, size=40, chunk_size=5).transform(retina_images)
    parallel = tlf.ImageFeatures(descriptors, size=40, chunk_size=5, n_jobs=2).transform(retina_images)
    np.testing.assert_array_equal(serial, parallel)


def test_cache_hit_returns_identical_features_and_changes_miss(retina_images, tmp_path, monkeypatch):
    extractor = tlf.ImageFeatures([("hog", tlf.HOG(pixels_per_cell=16))], preprocess=tlp.Resize(32), size=32,
                                  cache_dir=tmp_path)
    first = extractor.transform(retina_images)
    path = extractor.cache_path(retina_images)
    assert path.exists() and path.parent == tmp_path / "features"
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file

    def no_extraction(self, items):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(tlf.ImageFeatures, "_extract", no_extraction)
    np.testing.assert_array_equal(extractor.transform(retina_images), first)  # hit
    np.testing.assert_array_equal(clone(extractor).set_params(n_jobs=2).transform(retina_images), first)

    changed_descriptor = clone(extractor).set_params(descriptors=[("hog", tlf.HOG(pixels_per_cell=8))])
    changed_preprocess = clone(extractor).set_params(preprocess=tlp.Resize(33))
    changed_images = retina_images.copy()
    changed_images[0, 0, 0, 0] ^= 1
    for other, images in [(changed_descriptor, retina_images), (changed_preprocess, retina_images),
                          (extractor, changed_images), (extractor, retina_images[:10])]:
        assert other.cache_path(images) != path
        with pytest.raises(AssertionError, match="cache was not used"):
            other.transform(images)  # a miss recomputes


def test_cache_key_of_files_follows_their_content(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(a)
    Image.new("RGB", (10, 10), (1, 2, 3)).save(b)
    extractor = tlf.ImageFeatures([("colour", tlf.ColourHistogram())], size=10)
    assert extractor.cache_key([a]) == extractor.cache_key([b])  # same bytes, same key
    Image.new("RGB", (10, 10), (9, 2, 3)).save(b)
    assert extractor.cache_key([a]) != extractor.cache_key([b])


def test_stack_features_with_views(retina_images):
    split = tl.data.ImageSplit(retina_images, np.arange(24) % 3)
    extractor = tlf.ImageFeatures([("colour", tlf.ColourHistogram(grid=2))], size=28)
    X, y, groups = tlf.stack_features(extractor, [split, split.subset(range(4))], views=[None, tlp.Flip()])
    assert X.shape[0] == 2 * 28 and (y[:28] == y[28:]).all() and (groups == np.tile(np.arange(28), 2)).all()
    assert not np.array_equal(X[:28], X[28:])  # the mirror view differs for a 2x2 spatial histogram


# --------------------------------------------------------------------------- the SVM


def test_tempered_class_weight():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    balanced = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    assert list(tlf.tempered_class_weight(y, power=1.0).values()) == pytest.approx(list(balanced))
    assert list(tlf.tempered_class_weight(y, power=0.0).values()) == pytest.approx([1, 1, 1])
    assert list(tlf.tempered_class_weight(y).values()) == pytest.approx(list(np.sqrt(balanced)))


def test_tune_svm_with_groups_keeps_views_together():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int)
    X2, y2, groups = np.vstack([X, X + 0.01]), np.tile(y, 2), np.tile(np.arange(60), 2)
    search = tlf.tune_svm(X2, y2, {"svc__C": [0.1, 1.0]}, groups=groups, n_splits=3)
    for train, test in search.cv.split(X2, y2, groups):
        assert not set(groups[train]) & set(groups[test])
    originals = np.arange(120) < 60
    scored_on_originals = tlf.tune_svm(X2, y2, {"svc__C": [1.0]}, groups=groups, validate_on=originals, n_splits=3)
    for train, test in scored_on_originals.cv:
        assert originals[test].all() and not set(groups[train]) & set(groups[test])
        assert len(test) == len(set(groups[test]))
    table = tlf.cv_table(search)
    assert list(table.columns[:1]) == ["C"] and len(table) == 2 and search.best_score_ > 0.8
    scorer = tlf.quadratic_kappa_scorer()
    assert scorer(search.best_estimator_, X, y) > 0.5


# --------------------------------------------------------------------------- catalogue tags


@pytest.fixture(scope="module")
def catalogue():
    return tl.data.load_tag_dataset("fashion")


def test_catalogue_split(catalogue):
    train, test, dropped = tlf.catalogue_split(catalogue, seed=0)
    counts = catalogue.table["articleType"].value_counts()
    assert set(dropped.index) == set(counts[counts < 20].index) and (dropped < 20).all()
    assert len(train) + len(test) + dropped.sum() == len(catalogue)
    assert not set(train.index) & set(test.index)
    assert len(test) == pytest.approx(0.2 * (len(train) + len(test)), abs=1)
    assert set(test["articleType"]) <= set(train["articleType"])
    again, _, _ = tlf.catalogue_split(catalogue, seed=0)
    other, _, _ = tlf.catalogue_split(catalogue, seed=1)
    assert again.index.equals(train.index) and not other.index.equals(train.index)


def test_tag_metrics_known_values():
    fields = ["colour", "kind"]
    true = pd.DataFrame({"colour": ["red", "blue", "red", ""], "kind": ["shoe", "shoe", "bag", "bag"]})
    pred = pd.DataFrame({"colour": ["red", "red", "red", "blue"], "kind": ["shoe", "bag", "bag", "bag"]})
    m = tlf.tag_metrics(true, pred, fields)
    assert m["field_accuracy"] == {"colour": pytest.approx(2 / 3), "kind": pytest.approx(3 / 4)}
    assert m["exact_match"] == pytest.approx(3 / 4)  # row 1 wrong; the blank colour of row 3 is unknown
    assert m["micro_f1"] == pytest.approx(5 / 7)  # 7 known tags, 5 right; as many predicted as true
    # per tag F1: colour=red 0.8, colour=blue 0, kind=shoe 2/3, kind=bag 0.8
    assert m["macro_f1"] == pytest.approx((0.8 + 0 + 2 / 3 + 0.8) / 4)
    perfect = tlf.tag_metrics(true, true, fields)
    assert perfect["micro_f1"] == perfect["macro_f1"] == perfect["exact_match"] == 1.0


def test_tag_svm_fits_each_field():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 6))
    tags = pd.DataFrame({"colour": np.where(X[:, 0] > 0, "red", "blue"),
                         "kind": np.array(["shoe", "bag", "hat"])[np.argmax(X[:, 1:4], axis=1)],
                         "season": ["all"] * 90})
    tags.loc[:4, "colour"] = ""  # blanks are left out of training
    model = tlf.fit_tag_svm(X[:60], tags[:60], ["colour", "kind", "season"], C=10.0)
    assert set(vars(model)) >= {"scaler_", "models_"}
    pred = model.predict(X[60:])
    assert list(pred.columns) == ["colour", "kind", "season"] and len(pred) == 30
    assert (pred["season"] == "all").all() and set(pred["colour"]) <= {"red", "blue"}
    m = tlf.tag_metrics(tags[60:], pred, ["colour", "kind"])
    assert m["field_accuracy"]["colour"] >= 0.7 and m["field_accuracy"]["kind"] >= 0.5


def test_worker_warnings_come_back_once_with_a_count():
    images = np.zeros((6, 20, 20, 3), np.uint8)  # black: no disc anywhere
    extractor = tlf.ImageFeatures([("colour", tlf.ColourHistogram())], preprocess=[tlp.FundusCrop(16)], size=16,
                                  chunk_size=2, n_jobs=2)
    with pytest.warns(tlp.NoDiscFoundWarning, match="6 of 6 images: No fundus disc found") as caught:
        extractor.transform(images)
    assert len([w for w in caught if w.category is tlp.NoDiscFoundWarning]) == 1


def test_features_of_images_of_any_mode_and_size(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(path)  # 16-bit greyscale
    images = [Image.new("CMYK", (50, 30)), Image.new("RGBA", (5, 5)), np.zeros((10, 10), np.uint16), path,
              Image.new("P", (300, 7)), Image.new("1", (1, 1))]
    extractor = tlf.ImageFeatures([("hog", tlf.HOG(pixels_per_cell=16)), ("lbp", tlf.LBPHistogram()),
                                   ("colour", tlf.ColourHistogram()), ("lesions", tlf.FundusLesionStats())],
                                  preprocess=[tlp.ResizePad(32)], size=32)
    X = extractor.transform(images)
    assert X.shape[0] == len(images) and np.isfinite(X).all()


def test_notebooks_take_the_svm_recipe_from_the_library():
    """Notebook 02 builds no descriptors of its own: 02-05 all call baseline_features (the recipes had drifted)."""
    import nbformat

    root = tl.data.PROJECT_ROOT
    for name in ("02_feature_svm_baseline", "03_transfer_learning_dr", "04_transfer_learning_fashion", "05_tagging"):
        code = "\n".join(c.source for c in nbformat.read(root / "notebooks" / f"{name}.ipynb", as_version=4).cells
                         if c.cell_type == "code")
        for constructor in ("ImageFeatures(", "F.HOG(", "LBPHistogram(", "ColourHistogram(", "tune_svm("):
            assert constructor not in code, f"{name} builds its own {constructor}"


@pytest.mark.slow
def test_svm_baseline_records_what_notebook_02_records(tmp_path):
    """03 run alone computes the DR SVM row itself: it must equal notebook 02's (the reference run's) figures."""
    data = tl.data.load_dataset("retinamnist")
    result = tlf.svm_baseline(data, task="dr", seed=0, n_jobs=2, cache_dir=tmp_path)
    recorded = tl.report.reference_results()["dr"]["methods"]["svm"]
    assert result.features == tlf.DR_FEATURE_SETS["lesion statistics"]
    assert result.metrics == pytest.approx({k: recorded[k] for k in result.metrics}, abs=1e-12)
