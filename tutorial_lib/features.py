"""Handcrafted image features and the SVM baseline built on them.

Introduced in ``02_feature_svm_baseline``: the classical pipeline that the talk's fine-tuned
CNNs are measured against, done as well as the tutorial can.

- Descriptors, scikit-learn transformers from images (PIL, arrays or paths) to vectors:
  :class:`HOG` (shape), :class:`LBPHistogram` (texture), :class:`ColourHistogram`
  (colour) and :class:`FundusLesionStats` (bright and dark spots on a retina).
- :class:`ImageFeatures` runs several descriptors in one pass per image, after the
  preprocessing of :mod:`tutorial_lib.preprocess`, in parallel (joblib), and caches the
  feature matrix on disk under a key made of the images' content, every parameter and the
  library versions.
- :func:`tune_svm`: ``Pipeline(StandardScaler, SVC)`` tuned by a stratified ``GridSearchCV``;
  :func:`stack_features` for train + val and mirrored views; :func:`tempered_class_weight`.
- The catalogue-tag baseline: :func:`catalogue_split` (shared with the tagging notebook),
  :func:`fit_tag_svm` (an independent SVM per tag field) and :func:`tag_metrics`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin

from ._io import cached_array, fingerprint

FEATURES_VERSION = 1  # bump when a descriptor's output changes for the same parameters: old cache entries miss

ImageLike = Any  # PIL image, (H, W[, C]) array or path


# --------------------------------------------------------------------------- descriptors


class ImageDescriptor(TransformerMixin, BaseEstimator):
    """Base class: a stateless transformer from images to one fixed-length vector each.

    ``fit`` learns nothing and returns ``self``; ``transform`` stacks :meth:`describe` over
    the images (which must all have the same size for a fixed-length output).
    """

    def fit(self, X: Sequence[ImageLike], y: Any = None) -> "ImageDescriptor":
        return self

    def transform(self, X: Sequence[ImageLike]) -> np.ndarray:
        return np.stack([self.describe(_as_array(image)) for image in X])

    def describe(self, image: np.ndarray) -> np.ndarray:
        """The feature vector of one ``(H, W, 3)`` uint8 RGB image."""
        raise NotImplementedError

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def _as_array(image: ImageLike) -> np.ndarray:
    from .preprocess import as_rgb

    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    return np.asarray(as_rgb(image))


def _grey(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma as uint8, the input LBP is defined on."""
    return (image @ np.array([0.299, 0.587, 0.114])).round().clip(0, 255).astype(np.uint8)


def _grid_cells(shape: tuple[int, ...], grid: int) -> list[tuple[slice, slice]]:
    rows = np.linspace(0, shape[0], grid + 1).round().astype(int)
    cols = np.linspace(0, shape[1], grid + 1).round().astype(int)
    return [(slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1])) for i in range(grid) for j in range(grid)]


def _disc_mask(shape: tuple[int, ...], keep: float) -> np.ndarray:
    h, w = shape[:2]
    yy, xx = np.ogrid[:h, :w]
    return (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= (keep * min(h, w) / 2) ** 2


class HOG(ImageDescriptor):
    """Histograms of oriented gradients (Dalal and Triggs 2005): local shape and outline.

    Gradient orientations are counted in cells of ``pixels_per_cell`` px, normalised over
    blocks of ``cells_per_block`` cells; at each pixel the colour channel with the strongest
    gradient is used. The length grows with the image: about ``(size / pixels_per_cell)^2 x
    cells_per_block^2 x orientations``.
    """

    def __init__(self, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2,
                 block_norm: str = "L2-Hys", transform_sqrt: bool = False) -> None:
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.transform_sqrt = transform_sqrt

    def describe(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import hog

        return hog(image, orientations=self.orientations, pixels_per_cell=(self.pixels_per_cell,) * 2,
                   cells_per_block=(self.cells_per_block,) * 2, block_norm=self.block_norm,
                   transform_sqrt=self.transform_sqrt, channel_axis=-1, feature_vector=True).astype(np.float32)


class LBPHistogram(ImageDescriptor):
    """Histograms of rotation-invariant uniform local binary patterns (Ojala et al. 2002): texture.

    For each ``(points, radius)`` in ``scales`` each pixel's neighbourhood is coded as one of
    ``points + 2`` patterns (flat, edge, corner, ... or non-uniform); the descriptor is the
    normalised pattern histogram in each cell of a ``grid`` x ``grid`` layout, raised to
    ``power`` (0.5, the Hellinger or square-root map, keeps the commonest patterns from
    swamping the rare ones once the features are standardised).
    """

    def __init__(self, scales: Sequence[tuple[int, float]] = ((8, 1), (16, 2)), grid: int = 2,
                 power: float = 0.5) -> None:
        self.scales = scales
        self.grid = grid
        self.power = power

    def describe(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import local_binary_pattern

        grey = _grey(image)
        parts = []
        for points, radius in self.scales:
            codes = local_binary_pattern(grey, int(points), float(radius), method="uniform")
            for rows, cols in _grid_cells(grey.shape, self.grid):
                hist = np.bincount(codes[rows, cols].astype(np.int64).ravel(), minlength=int(points) + 2)
                parts.append((hist / max(1, hist.sum())) ** self.power)
        return np.concatenate(parts).astype(np.float32)


class ColourHistogram(ImageDescriptor):
    """A joint colour histogram (``space`` ``"hsv"``, ``"lab"`` or ``"rgb"``) with ``bins`` per channel.

    Normalised to sum to 1 in each cell of a ``grid`` x ``grid`` layout, then raised to
    ``power`` (0.5: the square-root or Hellinger map, so that one dominant colour, such as a
    white background, does not drown the garment's). ``region="disc"`` counts only pixels
    inside ``keep`` x the inscribed circle: on fundus photos the black surround and the ring
    mask would otherwise dominate.
    """

    def __init__(self, space: str = "hsv", bins: Sequence[int] = (8, 4, 4), grid: int = 1, region: str = "all",
                 keep: float = 0.9, power: float = 0.5) -> None:
        self.space = space
        self.bins = bins
        self.grid = grid
        self.region = region
        self.keep = keep
        self.power = power

    def describe(self, image: np.ndarray) -> np.ndarray:
        from skimage import color

        rgb = image.astype(np.float64) / 255.0
        if self.space == "hsv":
            values, ranges = color.rgb2hsv(rgb), [(0, 1), (0, 1), (0, 1)]
        elif self.space == "lab":
            values, ranges = color.rgb2lab(rgb), [(0, 100), (-128, 128), (-128, 128)]
        elif self.space == "rgb":
            values, ranges = rgb, [(0, 1), (0, 1), (0, 1)]
        else:
            raise ValueError(f"space must be 'hsv', 'lab' or 'rgb', not {self.space!r}.")
        if self.region not in ("all", "disc"):
            raise ValueError(f"region must be 'all' or 'disc', not {self.region!r}.")
        inside = _disc_mask(image.shape, self.keep) if self.region == "disc" else np.ones(image.shape[:2], bool)
        parts = []
        for rows, cols in _grid_cells(image.shape, self.grid):
            pixels = values[rows, cols][inside[rows, cols]]
            hist, _ = np.histogramdd(pixels, bins=list(self.bins), range=ranges)
            parts.append((hist.ravel() / max(1, len(pixels))) ** self.power)
        return np.concatenate(parts).astype(np.float32)


class FundusLesionStats(ImageDescriptor):
    """Bright and dark spots on a retina, and its colour by ring: a fundus-specific descriptor.

    Diabetic retinopathy is graded by lesions: dark red micro-aneurysms and haemorrhages,
    bright yellow exudates and cotton-wool spots. Their contrast is highest in the green
    channel. The descriptor takes the green channel's local contrast (the image minus its
    Gaussian blur with sigma ``sigma_fraction`` x the disc radius, as in Ben Graham's method)
    inside ``keep`` x the disc, and returns its quantiles and the fraction of pixels darker or
    brighter than ``thresholds`` (in grey levels); plus the mean L*a*b* colour in ``rings``
    concentric rings (illumination, pigmentation, haze). Expects a disc-centred crop of the
    *unnormalised* photo (the output of :class:`~tutorial_lib.preprocess.FundusCrop`).
    """

    def __init__(self, sigma_fraction: float = 1 / 30, thresholds: Sequence[float] = (4, 8, 16),
                 quantiles: Sequence[float] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99), rings: int = 3,
                 keep: float = 0.9) -> None:
        self.sigma_fraction = sigma_fraction
        self.thresholds = thresholds
        self.quantiles = quantiles
        self.rings = rings
        self.keep = keep

    def describe(self, image: np.ndarray) -> np.ndarray:
        from skimage import color
        from skimage.filters import gaussian

        h, w = image.shape[:2]
        radius = min(h, w) / 2
        inside = _disc_mask(image.shape, self.keep)
        green = image[..., 1].astype(np.float64)
        contrast = (green - gaussian(green, sigma=self.sigma_fraction * radius, preserve_range=True,
                                     mode="nearest"))[inside]
        thresholds = np.asarray(self.thresholds, dtype=np.float64)
        parts = [np.quantile(contrast, self.quantiles), (contrast[:, None] < -thresholds).mean(axis=0),
                 (contrast[:, None] > thresholds).mean(axis=0), [contrast.std()]]
        lab = color.rgb2lab(image.astype(np.float64) / 255.0)
        yy, xx = np.ogrid[:h, :w]
        distance = np.sqrt((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (self.keep * radius)
        edges = np.linspace(0, 1, self.rings + 1)
        for lo, hi in zip(edges[:-1], edges[1:]):
            ring = (distance >= lo) & (distance < hi) if hi < 1 else (distance >= lo) & (distance <= 1)
            parts.append(lab[ring].mean(axis=0) if ring.any() else np.zeros(3))
        return np.concatenate([np.ravel(p) for p in parts]).astype(np.float32)


# --------------------------------------------------------------------------- batch extraction + cache


class ImageFeatures(TransformerMixin, BaseEstimator):
    """Preprocess each image once, run every descriptor on it, concatenate: one row per image.

    ``descriptors`` is a list of ``(name, descriptor)`` pairs; ``preprocess`` a callable (or a
    sequence of callables applied in order) from :mod:`tutorial_lib.preprocess`, then the
    image is resized to ``size`` x ``size`` if it is not already. Images run in chunks on
    ``n_jobs`` processes. With ``cache_dir`` set, the matrix is stored as ``.npy`` under a key
    made of the images' content, every parameter that changes the result (not ``n_jobs``,
    ``cache_dir``, ``chunk_size`` or ``progress``)
    and the library versions: the same request is read back, any change recomputes.
    ``transform`` accepts a :class:`~tutorial_lib.data.ImageSplit`, a ``(N, H, W, C)`` array
    or a list of PIL images or paths. ``progress`` shows a progress bar (``tutorial_lib.progress``) while extracting.
    """

    def __init__(self, descriptors: Sequence[tuple[str, ImageDescriptor]], preprocess: Any = None,
                 size: int | None = 96, n_jobs: int = 1, cache_dir: str | Path | None = None,
                 chunk_size: int = 64, progress: bool = True) -> None:
        self.descriptors = descriptors
        self.preprocess = preprocess
        self.size = size
        self.n_jobs = n_jobs
        self.cache_dir = cache_dir
        self.chunk_size = chunk_size
        self.progress = progress

    def fit(self, X: Any, y: Any = None) -> "ImageFeatures":
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    def prepare(self, image: ImageLike) -> np.ndarray:
        """One image as the descriptors see it: preprocessed, resized, ``(size, size, 3)`` uint8."""
        return _prepare(image, self.preprocess, self.size)

    def feature_sizes(self, image: ImageLike) -> dict[str, int]:
        """How many columns each descriptor contributes (for this image size)."""
        array = self.prepare(image)
        return {name: int(d.describe(array).size) for name, d in self.descriptors}

    def feature_slices(self, image: ImageLike) -> dict[str, slice]:
        """The columns of each descriptor in the output of :meth:`transform`."""
        slices, start = {}, 0
        for name, size in self.feature_sizes(image).items():
            slices[name] = slice(start, start + size)
            start += size
        return slices

    def cache_path(self, X: Any) -> Path | None:
        """Where the features of ``X`` are (or would be) cached; ``None`` without ``cache_dir``."""
        if not self.cache_dir:
            return None
        return Path(self.cache_dir) / "features" / f"{self.cache_key(X)}.npy"

    def cache_key(self, X: Any) -> str:
        """Hex digest of the images' content, the parameters and the library versions."""
        import PIL
        import skimage

        from . import __version__

        params = {k: v for k, v in self.get_params(deep=False).items() if k not in ("n_jobs", "cache_dir", "chunk_size", "progress")}
        return fingerprint(repr((FEATURES_VERSION, __version__, skimage.__version__, PIL.__version__, np.__version__,
                                 _canonical(params))), _items(X), length=32)

    def transform(self, X: Any) -> np.ndarray:
        return cached_array(self.cache_path(X), lambda: self._extract(_items(X)))

    def _extract(self, items: Sequence[ImageLike]) -> np.ndarray:
        from joblib import Parallel, delayed
        from .progress import tqdm

        if len(items) == 0:
            raise ValueError("No images to describe.")
        chunks = [items[i:i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]
        descriptors = [d for _, d in self.descriptors]
        jobs = (delayed(_describe_chunk)(chunk, self.preprocess, self.size, descriptors) for chunk in chunks)
        results = Parallel(n_jobs=self.n_jobs, return_as="generator")(jobs)
        parts, caught = [], {}
        for rows, chunk_warnings in tqdm(results, total=len(chunks), desc="features", unit="chunk",
                                         disable=not self.progress or len(chunks) < 4):
            parts.append(rows)
            for category, message in chunk_warnings:
                count, first = caught.get(category, (0, message))
                caught[category] = (count + 1, first)
        for category, (count, first) in caught.items():  # one warning per kind, in this process, with a count
            warnings.warn(f"{count} of {len(items)} images: {first}", category, stacklevel=3)
        return np.concatenate(parts).astype(np.float32)


def _items(X: Any) -> Sequence[ImageLike]:
    """The images of an ImageSplit, an array of images or a list."""
    images = getattr(X, "images", X)
    if isinstance(images, np.ndarray):
        return images
    return list(images)


def _prepare(image: ImageLike, preprocess: Any, size: int | None) -> np.ndarray:
    from .preprocess import as_rgb

    image = as_rgb(image)
    steps = preprocess if isinstance(preprocess, (list, tuple)) else ([preprocess] if preprocess else [])
    for step in steps:
        image = step(image)
    image = as_rgb(image)
    if size and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    return np.asarray(image)


def _describe_chunk(chunk: Sequence[ImageLike], preprocess: Any, size: int | None,
                    descriptors: Sequence[ImageDescriptor]) -> tuple[np.ndarray, list[tuple[type, str]]]:
    """Feature rows of a chunk of images, and the warnings raised (worker processes cannot show them)."""
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for image in chunk:
            array = _prepare(image, preprocess, size)
            rows.append(np.concatenate([d.describe(array) for d in descriptors]))
    return np.stack(rows).astype(np.float32), [(w.category, str(w.message)) for w in caught]


def _canonical(value: Any) -> Any:
    """A repr-able, address-free description of parameters (nested estimators included)."""
    if isinstance(value, BaseEstimator):
        return (type(value).__qualname__, {k: _canonical(v) for k, v in sorted(value.get_params(deep=False).items())})
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)  # dataclass transforms list their fields; a lambda's repr changes every session (a miss)


def stack_features(extractor: "ImageFeatures", splits: Sequence[Any], views: Sequence[Any] = (None,)
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of several splits stacked into one set (e.g. train + val), under each of ``views``.

    A view is an extra transform applied after the extractor's preprocessing (``None``: the
    image as it is; ``Flip()``: its mirror image), a cheap way to augment the training set of
    an SVM. Returns ``(X, y, groups)``, view after view; ``groups`` numbers the original
    images, so a grouped cross-validation keeps every view of an image in the same fold.
    """
    from sklearn.base import clone

    base = list(extractor.preprocess) if isinstance(extractor.preprocess, (list, tuple)) else (
        [extractor.preprocess] if extractor.preprocess else [])
    labels = np.concatenate([np.asarray(s.labels) for s in splits])
    blocks = []
    for view in views:
        viewed = clone(extractor).set_params(preprocess=base + ([view] if view else []))
        blocks.append(np.vstack([viewed.transform(s) for s in splits]))
    groups = np.tile(np.arange(len(labels)), len(views))
    return np.vstack(blocks), np.tile(labels, len(views)), groups


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

    from sklearn.model_selection import train_test_split

    from .data import _stratified_split, group_ids

    table = tag_data.table if hasattr(tag_data, "table") else tag_data
    counts = table["articleType"].value_counts()
    rare = counts[counts < min_type_count]
    kept = table[~table["articleType"].isin(rare.index)]
    if group_pattern:
        root = Path(os.path.commonpath([str(Path(p).parent) for p in kept["path"]]))
        kept = kept.assign(group=group_ids(list(kept["path"]), group_pattern, root))
        codes = kept["articleType"].astype("category").cat.codes.to_numpy()
        keep, held = _stratified_split(np.arange(len(kept)), codes, test_fraction, seed, kept["group"].to_numpy())
        train, test = kept.iloc[keep], kept.iloc[held]
    else:
        train, test = train_test_split(kept, test_size=test_fraction, random_state=seed, stratify=kept["articleType"])
    return train.sort_index(), test.sort_index(), rare.rename("images dropped")


class TagSVM(BaseEstimator):
    """Independent SVMs, one per tag field, on shared standardised features.

    Each field is a multi-class RBF SVM (``C``, ``gamma``) and is predicted on its own, with
    no knowledge of the other fields: the baseline that a tagger which writes tags as a
    sequence (notebook 05) has to beat. ``class_weight`` is ``None``, ``"balanced"`` or
    ``"tempered"`` (:func:`tempered_class_weight`, computed per field). Rows with a blank
    value in a field are left out of that field's training; a field with one value becomes
    a constant. ``fit(X, tags)`` takes a feature matrix and a table with one column per field.
    """

    def __init__(self, fields: Sequence[str], C: float = 10.0, gamma: Any = "scale",
                 class_weight: str | None = "tempered", random_state: int = 0, n_jobs: int = 1) -> None:
        self.fields = fields
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.random_state = random_state
        self.n_jobs = n_jobs

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


def tag_metrics(true_table: pd.DataFrame, pred_table: pd.DataFrame, fields: Sequence[str]) -> dict[str, Any]:
    """How well predicted tags match the true ones.

    Each image has one ``field=value`` tag per field. Returns ``field_accuracy`` (per field),
    ``micro_f1`` and ``macro_f1`` over all ``field=value`` tags (macro: the unweighted mean over
    every tag that is true or predicted somewhere, so rare tags count as much as common ones),
    and ``exact_match`` (all fields right). A blank true value is unknown: that field of that
    image is left out of the field's accuracy and of the F1 scores, and does not break an exact match.
    """
    from sklearn.metrics import f1_score
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


# --------------------------------------------------------------------------- pictures of the descriptors


def hog_image(image: ImageLike, descriptor: HOG | None = None) -> np.ndarray:
    """The HOG drawing of an image: each cell's dominant gradient orientations as little strokes."""
    from skimage.exposure import rescale_intensity
    from skimage.feature import hog

    d = descriptor or HOG()
    _, picture = hog(_as_array(image), orientations=d.orientations, pixels_per_cell=(d.pixels_per_cell,) * 2,
                     cells_per_block=(d.cells_per_block,) * 2, block_norm=d.block_norm, channel_axis=-1,
                     visualize=True)
    return rescale_intensity(picture, out_range=(0.0, 1.0))


def lbp_image(image: ImageLike, points: int = 8, radius: float = 1) -> np.ndarray:
    """The uniform LBP code of every pixel (0 .. points + 1), the values :class:`LBPHistogram` counts."""
    from skimage.feature import local_binary_pattern

    return local_binary_pattern(_grey(_as_array(image)), int(points), float(radius), method="uniform")


def local_contrast_image(image: ImageLike, sigma_fraction: float = 1 / 30) -> np.ndarray:
    """The green channel minus its blur (the signal :class:`FundusLesionStats` summarises)."""
    from skimage.filters import gaussian

    green = _as_array(image)[..., 1].astype(np.float64)
    return green - gaussian(green, sigma=sigma_fraction * min(green.shape) / 2, preserve_range=True, mode="nearest")


# --------------------------------------------------------------------------- notebook 02's recipe, in one place

#: The descriptor subsets notebook 02 compares by cross-validation on fundus photographs.
DR_FEATURE_SETS: dict[str, list[str]] = {
    "HOG + colour (the plain baseline)": ["hog", "colour"],
    "lesion statistics": ["lesions"],
    "lesions + LBP + colour": ["lesions", "lbp", "colour"],
    "all four": ["hog", "lbp", "colour", "lesions"],
}


def baseline_features(task: str, *, n_jobs: int = 2, cache_dir: str | Path | None = None,
                      progress: bool = False) -> "ImageFeatures":
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

    return [None] if task == "dr" else [None, pp.Flip()]


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
