"""tutorial_lib.handcrafted: descriptors with known answers, batch extraction and its cache."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone

import tutorial_lib as tl
import tutorial_lib.handcrafted as tlh
import tutorial_lib.preprocess as tlp

DESCRIPTORS = [tlh.HOG(), tlh.LBPHistogram(), tlh.ColourHistogram(), tlh.FundusLesionStats()]


@pytest.fixture(scope="module")
def retina_images():
    return tl.data.load_dataset("retinamnist").train.images[:24]  # (24, 28, 28, 3) uint8


def flat(colour=(200, 30, 30), size=48) -> np.ndarray:
    return np.full((size, size, 3), colour, dtype=np.uint8)


# --------------------------------------------------------------------------- descriptors


def test_descriptors_follow_sklearn_conventions():
    for descriptor in DESCRIPTORS + [tlh.ImageFeatures([("hog", tlh.HOG())])]:
        params = descriptor.get_params(deep=False)
        assert vars(descriptor) == params  # __init__ stores its arguments and nothing else
        twin = clone(descriptor)
        assert twin.get_params(deep=False).keys() == params.keys()
        assert descriptor.fit([flat()]) is descriptor
        assert not [k for k in vars(descriptor) if k.endswith("_")]  # stateless: nothing learned
    changed = clone(tlh.HOG()).set_params(pixels_per_cell=16)
    assert changed.pixels_per_cell == 16


def test_descriptor_outputs_are_finite_fixed_length(retina_images):
    for descriptor in DESCRIPTORS:
        X = descriptor.fit_transform(retina_images)
        assert X.shape[0] == len(retina_images) and X.dtype == np.float32 and np.isfinite(X).all()


def test_hog_of_a_flat_image_is_zero_and_length_matches_the_formula():
    features = tlh.HOG(orientations=9, pixels_per_cell=8, cells_per_block=2).describe(flat(size=48))
    assert features.shape == ((48 // 8 - 1) ** 2 * 2 * 2 * 9,) and not features.any()


def test_hog_sees_an_edge():
    image = flat((0, 0, 0))
    image[:, 24:] = 255
    assert tlh.HOG().describe(image).max() > 0.1


def test_colour_histogram_of_one_colour_has_one_full_bin():
    hist = tlh.ColourHistogram(space="rgb", bins=(4, 4, 4), power=1.0).describe(flat((250, 10, 10)))
    assert hist.sum() == pytest.approx(1.0) and hist.max() == 1.0 and np.argmax(hist) == 3 * 16
    hsv = tlh.ColourHistogram(power=0.5).describe(flat((250, 10, 10)))
    assert hsv.max() == 1.0 and (hsv > 0).sum() == 1


def test_colour_histogram_disc_region_ignores_the_corners():
    image = flat((0, 0, 0))
    image[20:28, 20:28] = (250, 250, 250)  # white centre, black corners
    everything = tlh.ColourHistogram(space="rgb", bins=(2, 2, 2), power=1.0).describe(image)
    disc = tlh.ColourHistogram(space="rgb", bins=(2, 2, 2), power=1.0, region="disc", keep=0.15).describe(image)
    assert everything[0] > 0.9 and disc[-1] == pytest.approx(1.0)


def test_lbp_of_a_flat_image_is_all_flat_patterns():
    hist = tlh.LBPHistogram(scales=((8, 1),), grid=1, power=1.0).describe(flat())
    assert hist.shape == (10,) and hist[8] > 0.9  # code P, every neighbour >= centre (the border pixels aside)
    assert tlh.LBPHistogram(scales=((8, 1), (16, 2)), grid=2).describe(flat()).shape == (4 * (10 + 18),)


def test_lesion_stats_count_dark_spots():
    rng = np.random.default_rng(0)
    clean = np.full((96, 96, 3), (180, 90, 40), dtype=np.uint8)
    spotted = clean.copy()
    for y, x in rng.integers(30, 66, (12, 2)):
        spotted[y:y + 2, x:x + 2] = (90, 20, 10)  # dark red dots: micro-aneurysms
    describe = tlh.FundusLesionStats(thresholds=(8,)).describe
    dark_fraction = 7  # after the 7 quantiles
    assert describe(clean)[dark_fraction] == 0 and describe(spotted)[dark_fraction] > 0.002


def test_descriptor_pictures():
    image = flat()
    image[:, 24:] = 0
    assert tlh.hog_image(image).shape == (48, 48)
    codes = tlh.lbp_image(image)
    assert codes.shape == (48, 48) and codes.max() <= 9
    assert abs(tlh.local_contrast_image(flat())).max() < 1e-6


# --------------------------------------------------------------------------- batch extraction and cache


def test_image_features_on_real_images(retina_images, clothing):
    extractor = tlh.ImageFeatures([("hog", tlh.HOG(pixels_per_cell=16)), ("colour", tlh.ColourHistogram())],
                                  preprocess=[tlp.FundusCrop(48)], size=48)
    X = extractor.transform(retina_images)
    sizes = extractor.feature_sizes(retina_images[0])
    assert X.shape == (24, sum(sizes.values())) and sizes == {"hog": 36 * 4, "colour": 128}
    photos = tlh.ImageFeatures([("hog", tlh.HOG(pixels_per_cell=16))], size=48).transform(clothing.test.images[:5])
    assert photos.shape == (5, 36 * 4)


def test_parallel_extraction_matches_serial(retina_images):
    descriptors = [("lbp", tlh.LBPHistogram()), ("lesion", tlh.FundusLesionStats())]
    serial = tlh.ImageFeatures(descriptors, size=40, chunk_size=5).transform(retina_images)
    parallel = tlh.ImageFeatures(descriptors, size=40, chunk_size=5, n_jobs=2).transform(retina_images)
    np.testing.assert_array_equal(serial, parallel)


def test_cache_hit_returns_identical_features_and_changes_miss(retina_images, tmp_path, monkeypatch):
    extractor = tlh.ImageFeatures([("hog", tlh.HOG(pixels_per_cell=16))], preprocess=tlp.Resize(32), size=32,
                                  cache_dir=tmp_path)
    first = extractor.transform(retina_images)
    path = extractor.cache_path(retina_images)
    assert path.exists() and path.parent == tmp_path / "features"
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file

    def no_extraction(self, items):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(tlh.ImageFeatures, "_extract", no_extraction)
    np.testing.assert_array_equal(extractor.transform(retina_images), first)  # hit
    np.testing.assert_array_equal(clone(extractor).set_params(n_jobs=2).transform(retina_images), first)

    changed_descriptor = clone(extractor).set_params(descriptors=[("hog", tlh.HOG(pixels_per_cell=8))])
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
    extractor = tlh.ImageFeatures([("colour", tlh.ColourHistogram())], size=10)
    assert extractor.cache_key([a]) == extractor.cache_key([b])  # same bytes, same key
    Image.new("RGB", (10, 10), (9, 2, 3)).save(b)
    assert extractor.cache_key([a]) != extractor.cache_key([b])


def test_stack_features_with_views(retina_images):
    split = tl.data.ImageSplit(retina_images, np.arange(24) % 3)
    extractor = tlh.ImageFeatures([("colour", tlh.ColourHistogram(grid=2))], size=28)
    X, y, groups = tlh.stack_features(extractor, [split, split.subset(range(4))], views=[None, tlp.View("hflip")])
    assert X.shape[0] == 2 * 28 and (y[:28] == y[28:]).all() and (groups == np.tile(np.arange(28), 2)).all()
    assert not np.array_equal(X[:28], X[28:])  # the mirror view differs for a 2x2 spatial histogram


# --------------------------------------------------------------------------- the SVM


def test_worker_warnings_come_back_once_with_a_count():
    images = np.zeros((6, 20, 20, 3), np.uint8)  # black: no disc anywhere
    extractor = tlh.ImageFeatures([("colour", tlh.ColourHistogram())], preprocess=[tlp.FundusCrop(16)], size=16,
                                  chunk_size=2, n_jobs=2)
    with pytest.warns(tlp.NoDiscFoundWarning, match="6 of 6 images: No fundus disc found") as caught:
        extractor.transform(images)
    assert len([w for w in caught if w.category is tlp.NoDiscFoundWarning]) == 1


def test_features_of_images_of_any_mode_and_size(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(path)  # 16-bit greyscale
    images = [Image.new("CMYK", (50, 30)), Image.new("RGBA", (5, 5)), np.zeros((10, 10), np.uint16), path,
              Image.new("P", (300, 7)), Image.new("1", (1, 1))]
    extractor = tlh.ImageFeatures([("hog", tlh.HOG(pixels_per_cell=16)), ("lbp", tlh.LBPHistogram()),
                                   ("colour", tlh.ColourHistogram()), ("lesions", tlh.FundusLesionStats())],
                                  preprocess=[tlp.ResizePad(32)], size=32)
    X = extractor.transform(images)
    assert X.shape[0] == len(images) and np.isfinite(X).all()
