"""Handcrafted image descriptors: what the classical pipeline of notebook 02 sees in an image.

Introduced in ``01_preprocessing`` and ``02_feature_svm_baseline``; the SVM trained on these
vectors is in :mod:`tutorial_lib.baselines`.

- Descriptors, scikit-learn transformers from images (PIL, arrays or paths) to vectors:
  :class:`HOG` (shape), :class:`LBPHistogram` (texture), :class:`ColourHistogram`
  (colour) and :class:`FundusLesionStats` (bright and dark spots on a retina).
- :class:`ImageFeatures` runs several descriptors in one pass per image, after the
  preprocessing of :mod:`tutorial_lib.preprocess`, in parallel (joblib), and caches the
  feature matrix on disk under a key made of the images' content, every parameter and the
  library versions; :func:`stack_features` stacks splits (train + val) and mirrored views.
- Pictures of what a descriptor measures: :func:`hog_image`, :func:`lbp_image`,
  :func:`local_contrast_image`.

Every descriptor and :class:`ImageFeatures` is a dataclass: its ``__init__`` stores its
arguments and nothing else, as scikit-learn's ``get_params`` / ``clone`` expect.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin

from ._io import cached_array, fingerprint
from .data import as_rgb
from .preprocess import disc_mask

FEATURES_VERSION = 1  # bump when a descriptor's output changes for the same parameters: old cache entries miss

ImageLike = Any  # PIL image, (H, W[, C]) array or path


# --------------------------------------------------------------------------- descriptors


class _Stateless(TransformerMixin, BaseEstimator):
    """A transformer that learns nothing: ``fit`` returns ``self`` and scikit-learn need not call it first."""

    def fit(self, X: Any, y: Any = None) -> "_Stateless":
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class ImageDescriptor(_Stateless):
    """Base class: a stateless transformer from images to one fixed-length vector each.

    ``transform`` stacks :meth:`describe` over the images (which must all have the same size
    for a fixed-length output).
    """

    def transform(self, X: Sequence[ImageLike]) -> np.ndarray:
        return np.stack([self.describe(_as_array(image)) for image in X])

    def describe(self, image: np.ndarray) -> np.ndarray:
        """The feature vector of one ``(H, W, 3)`` uint8 RGB image."""
        raise NotImplementedError


def _as_array(image: ImageLike) -> np.ndarray:
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


@dataclass(repr=False, eq=False)
class HOG(ImageDescriptor):
    """Histograms of oriented gradients (Dalal and Triggs 2005): local shape and outline.

    Gradient orientations are counted in cells of ``pixels_per_cell`` px, normalised over
    blocks of ``cells_per_block`` cells; at each pixel the colour channel with the strongest
    gradient is used. The length grows with the image: about ``(size / pixels_per_cell)^2 x
    cells_per_block^2 x orientations``.
    """

    orientations: int = 9
    pixels_per_cell: int = 8
    cells_per_block: int = 2
    block_norm: str = "L2-Hys"
    transform_sqrt: bool = False

    def describe(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import hog

        return hog(image, **self.options(), feature_vector=True).astype(np.float32)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``skimage.feature.hog`` this descriptor stands for."""
        return {"orientations": self.orientations, "pixels_per_cell": (self.pixels_per_cell,) * 2,
                "cells_per_block": (self.cells_per_block,) * 2, "block_norm": self.block_norm,
                "transform_sqrt": self.transform_sqrt, "channel_axis": -1}


@dataclass(repr=False, eq=False)
class LBPHistogram(ImageDescriptor):
    """Histograms of rotation-invariant uniform local binary patterns (Ojala et al. 2002): texture.

    For each ``(points, radius)`` in ``scales`` each pixel's neighbourhood is coded as one of
    ``points + 2`` patterns (flat, edge, corner, ... or non-uniform); the descriptor is the
    normalised pattern histogram in each cell of a ``grid`` x ``grid`` layout, raised to
    ``power`` (0.5, the Hellinger or square-root map, keeps the commonest patterns from
    swamping the rare ones once the features are standardised).
    """

    scales: Sequence[tuple[int, float]] = ((8, 1), (16, 2))
    grid: int = 2
    power: float = 0.5

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


@dataclass(repr=False, eq=False)
class ColourHistogram(ImageDescriptor):
    """A joint colour histogram (``space`` ``"hsv"``, ``"lab"`` or ``"rgb"``) with ``bins`` per channel.

    Normalised to sum to 1 in each cell of a ``grid`` x ``grid`` layout, then raised to
    ``power`` (0.5: the square-root or Hellinger map, so that one dominant colour, such as a
    white background, does not drown the garment's). ``region="disc"`` counts only pixels
    inside ``keep`` x the inscribed circle: on fundus photos the black surround and the ring
    mask would otherwise dominate.
    """

    space: str = "hsv"
    bins: Sequence[int] = (8, 4, 4)
    grid: int = 1
    region: str = "all"
    keep: float = 0.9
    power: float = 0.5

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
        inside = disc_mask(image.shape, self.keep) if self.region == "disc" else np.ones(image.shape[:2], bool)
        parts = []
        for rows, cols in _grid_cells(image.shape, self.grid):
            pixels = values[rows, cols][inside[rows, cols]]
            hist, _ = np.histogramdd(pixels, bins=list(self.bins), range=ranges)
            parts.append((hist.ravel() / max(1, len(pixels))) ** self.power)
        return np.concatenate(parts).astype(np.float32)


@dataclass(repr=False, eq=False)
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

    sigma_fraction: float = 1 / 30
    thresholds: Sequence[float] = (4, 8, 16)
    quantiles: Sequence[float] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    rings: int = 3
    keep: float = 0.9

    def describe(self, image: np.ndarray) -> np.ndarray:
        from skimage import color
        from skimage.filters import gaussian

        h, w = image.shape[:2]
        radius = min(h, w) / 2
        inside = disc_mask(image.shape, self.keep)
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


@dataclass(repr=False, eq=False)
class ImageFeatures(_Stateless):
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

    descriptors: Sequence[tuple[str, ImageDescriptor]]
    preprocess: Any = None
    size: int | None = 96
    n_jobs: int = 1
    cache_dir: str | Path | None = None
    chunk_size: int = 64
    progress: bool = True

    def described_array(self, image: ImageLike) -> np.ndarray:
        """One image as the descriptors see it: preprocessed, resized, ``(size, size, 3)`` uint8."""
        return _described_array(image, self.preprocess, self.size)

    def feature_sizes(self, image: ImageLike) -> dict[str, int]:
        """How many columns each descriptor contributes (for this image size)."""
        array = self.described_array(image)
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

        from ._version import __version__

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


def _steps(preprocess: Any) -> list[Any]:
    """``preprocess`` as a list of steps: a sequence as it is, one callable alone, ``None`` none."""
    return list(preprocess) if isinstance(preprocess, (list, tuple)) else ([preprocess] if preprocess else [])


def _described_array(image: ImageLike, preprocess: Any, size: int | None) -> np.ndarray:
    image = as_rgb(image)
    for step in _steps(preprocess):
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
            array = _described_array(image, preprocess, size)
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
    image as it is; ``View("hflip")``: its mirror image), a cheap way to augment the training set of
    an SVM. Returns ``(X, y, groups)``, view after view; ``groups`` numbers the original
    images, so a grouped cross-validation keeps every view of an image in the same fold.
    """
    from sklearn.base import clone

    base = _steps(extractor.preprocess)
    labels = np.concatenate([np.asarray(s.labels) for s in splits])
    blocks = []
    for view in views:
        viewed = clone(extractor).set_params(preprocess=base + ([view] if view else []))
        blocks.append(np.vstack([viewed.transform(s) for s in splits]))
    groups = np.tile(np.arange(len(labels)), len(views))
    return np.vstack(blocks), np.tile(labels, len(views)), groups


# --------------------------------------------------------------------------- pictures of the descriptors


def hog_image(image: ImageLike, descriptor: HOG | None = None) -> np.ndarray:
    """The HOG drawing of an image: each cell's dominant gradient orientations as little strokes."""
    from skimage.exposure import rescale_intensity
    from skimage.feature import hog

    _, picture = hog(_as_array(image), **(descriptor or HOG()).options(), visualize=True)
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
