"""Domain preprocessing: fundus discs, clothing photos and augmentation.

Introduced in ``01_preprocessing``; ``02_feature_svm_baseline`` feeds its output to the
handcrafted features, and the fine-tuning notebooks put the same steps in front of a CNN.

Two layers:

- **functions** that do one thing and say so: :func:`find_disc`, :func:`crop_to_disc`,
  :func:`ben_graham`, :func:`ring_mask` (inside it, :func:`disc_mask`), :func:`clahe`, :func:`resize_pad`;
- **transforms**, small frozen dataclasses (PIL image in, RGB PIL image out) such as
  :class:`FundusCrop` and :class:`BenGraham`, that compose with ``torchvision.transforms``
  (``Compose([FundusCrop(224), BenGraham(), RingMask(), backbone_transform])``) and, because
  their ``repr`` lists every parameter, key the feature cache in :mod:`tutorial_lib.handcrafted`.

Every entry point accepts images of any size, PIL mode (``L``, ``P``, ``RGBA``, ``CMYK``,
16-bit ...), EXIF orientation, or a NumPy array, through :func:`~tutorial_lib.data.as_rgb` (the
package's one image decoder, importable from here too).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from .data import ImageSplit, as_rgb, open_image


class NoDiscFoundWarning(UserWarning):
    """No fundus disc was found in an image; a centre crop was used instead."""


# --------------------------------------------------------------------------- fundus disc


@dataclass(frozen=True)
class Disc:
    """A circle in pixel coordinates: centre ``(x, y)`` (pixel centres at integers) and ``radius``."""

    x: float
    y: float
    radius: float


def find_disc(image: Image.Image | np.ndarray, *, threshold: float = 0.1, work_size: int = 256,
              min_area: float = 0.05, min_iou: float = 0.85) -> Disc | None:
    """Find the fundus disc on its (usually black) surround; ``None`` when there is none.

    The image is shrunk to ``work_size`` px; the surround's colour is read in the corners
    (outside any round disc) and pixels that differ from it by more than ``threshold`` x the
    99th-percentile difference form the disc (the largest connected region, holes filled). A circle is
    fitted with RANSAC to the region's edge *away from the image frame*, so a disc clipped at
    the top and bottom (common in EyePACS) still gets its true radius. The fit is accepted
    only if the circle overlaps the region well (intersection over union >= ``min_iou``)
    and the region covers at least ``min_area`` of the image.
    """
    from scipy import ndimage as ndi
    from skimage.measure import CircleModel, label, ransac

    rgb = as_rgb(image)
    width, height = rgb.size
    scale = min(1.0, work_size / max(width, height))
    small = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR) \
        if scale < 1 else rgb
    array = np.asarray(small, dtype=np.float32)
    h, w = array.shape[:2]
    if min(h, w) < 8:
        return None
    k = max(1, min(h, w) // 10)  # the corners lie outside a round disc: their colour is the surround's
    corners = np.concatenate([array[:k, :k], array[:k, -k:], array[-k:, :k], array[-k:, -k:]]).reshape(-1, 3)
    contrast = np.abs(array - np.median(corners, axis=0)).max(axis=2)  # brightness, on the usual black surround
    top = float(np.percentile(contrast, 99))
    if top <= 0:
        return None
    regions = label(contrast > threshold * top, connectivity=2)
    if regions.max() == 0:
        return None
    disc = ndi.binary_fill_holes(regions == np.argmax(np.bincount(regions.ravel())[1:]) + 1)
    if disc.mean() < min_area:
        return None
    edge = disc & ~ndi.binary_erosion(disc, border_value=1)  # border_value=1: the frame is not an edge
    ys, xs = np.nonzero(edge)
    inside = (xs > 0) & (xs < w - 1) & (ys > 0) & (ys < h - 1)
    if inside.sum() < 12:
        return None  # the bright region fills the frame: no disc edge to fit
    points = np.column_stack([xs[inside], ys[inside]]).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RANSAC warns on degenerate samples; handled below
        model, _ = ransac(points, CircleModel, min_samples=3, residual_threshold=max(1.0, 0.005 * max(h, w)),
                          max_trials=200, rng=0)
    if model is None:
        return None
    cx, cy = (float(v) for v in model.center)
    radius = float(model.radius) + 0.5  # edge pixels lie half a pixel inside the true boundary
    if not (0 <= cx < w and 0 <= cy < h) or radius < 4:
        return None
    circle = disc_mask((h, w), radius=radius, centre=(cx, cy))
    iou = (circle & disc).sum() / max(1, (circle | disc).sum())
    if iou < min_iou:
        return None
    sx, sy = w / width, h / height
    return Disc((cx + 0.5) / sx - 0.5, (cy + 0.5) / sy - 0.5, radius / ((sx + sy) / 2))


def centre_disc(image: Image.Image) -> Disc:
    """The circle inscribed in the image: the fallback when no disc is found."""
    return Disc((image.width - 1) / 2, (image.height - 1) / 2, min(image.size) / 2)


def crop_to_disc(image: Image.Image | np.ndarray, disc: Disc | None = None, *, size: int | None = None,
                 margin: float = 0.0, fallback: str = "centre") -> Image.Image:
    """Crop a square around the fundus disc and rescale it, so every disc gets the same radius.

    The output is ``size`` x ``size`` px (``None``: the crop's own size) with the disc centred and
    its radius equal to ``size / (2 * (1 + margin))``. Parts of the square outside the photo are
    black. ``disc=None`` finds it with :func:`find_disc`; when none is found the image's
    inscribed circle is used (``fallback="centre"``) with a :class:`NoDiscFoundWarning`, or a
    ``ValueError`` is raised (``fallback="error"``).
    """
    rgb = as_rgb(image)
    if disc is None:
        disc = find_disc(rgb)
        if disc is None:
            message = (f"No fundus disc found in this {rgb.width}x{rgb.height} image; "
                       "falling back to a centre crop.")
            if fallback == "error":
                raise ValueError(message)
            warnings.warn(message, NoDiscFoundWarning, stacklevel=2)
            disc = centre_disc(rgb)
    half = disc.radius * (1 + margin)
    # PIL coordinates: pixel i spans [i, i + 1), so the disc centre is at x + 0.5
    x0, y0, x1, y1 = disc.x + 0.5 - half, disc.y + 0.5 - half, disc.x + 0.5 + half, disc.y + 0.5 + half
    ix0, iy0, ix1, iy1 = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
    crop = rgb.crop((ix0, iy0, ix1, iy1))  # out-of-frame parts come back black
    side = max(1, round(2 * half)) if size is None else int(size)
    return crop.resize((side, side), Image.BICUBIC, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0), reducing_gap=3.0)


# --------------------------------------------------------------------------- fundus normalisation


def _disc_radius(image: Image.Image, radius: float | None) -> float:
    return float(radius) if radius else min(image.size) / 2


def disc_mask(shape: tuple[int, ...], keep: float = 1.0, radius: float | None = None,
              centre: tuple[float, float] | None = None) -> np.ndarray:
    """``True`` inside the disc of ``keep`` x ``radius`` px (``None``: half the shorter side) about ``centre``
    (``(x, y)``; ``None``: the image's centre) of an image of ``shape`` ``(H, W, ...)``: by default the region
    of a disc-centred fundus crop that holds the retina."""
    h, w = shape[:2]
    cx, cy = ((w - 1) / 2, (h - 1) / 2) if centre is None else centre
    yy, xx = np.ogrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= (keep * (radius or min(h, w) / 2)) ** 2


def ben_graham(image: Image.Image | np.ndarray, radius: float | None = None, *, sigma_fraction: float = 1 / 30,
               weight: float = 4.0, offset: float = 128.0) -> Image.Image:
    """Ben Graham's local-average colour subtraction (Kaggle Diabetic Retinopathy 2015, 1st place).

    ``weight * (image - gaussian_blur(image)) + offset``, clipped to 0-255: the slowly varying
    illumination and pigmentation (which differ between cameras and patients) are removed, and
    small structures (vessels, micro-aneurysms, exudates) stand out on a neutral grey. The blur's
    sigma is ``sigma_fraction`` of the **disc radius** (``radius``, in pixels; ``None``: half the
    shorter side, the disc after :func:`crop_to_disc` with no margin), so the same anatomy is
    removed whatever the output size. Ben Graham used radius 300 px and sigma 10 px (1/30).
    """
    from skimage.filters import gaussian

    rgb = as_rgb(image)
    array = np.asarray(rgb, dtype=np.float32)
    sigma = sigma_fraction * _disc_radius(rgb, radius)
    blurred = gaussian(array, sigma=sigma, channel_axis=-1, preserve_range=True, mode="nearest")
    return Image.fromarray((weight * (array - blurred) + offset).round().clip(0, 255).astype(np.uint8))


def ring_mask(image: Image.Image | np.ndarray, radius: float | None = None, *, keep: float = 0.9,
              fill: int | Sequence[int] = 128) -> Image.Image:
    """Paint everything outside ``keep`` x the disc radius with ``fill``.

    The disc's outer ring is where the blur of :func:`ben_graham` mixes in the black surround,
    drawing a bright artificial halo; Ben Graham removed the outer 10 %. ``radius=None``: half
    the shorter side, centred (the disc after :func:`crop_to_disc`). Use ``fill=0`` on images
    that were not normalised.
    """
    rgb = as_rgb(image)
    array = np.array(rgb)
    array[~disc_mask(array.shape, keep, _disc_radius(rgb, radius))] = fill
    return Image.fromarray(array)


def clahe(image: Image.Image | np.ndarray, radius: float | None = None, *, clip_limit: float = 0.01,
          kernel_fraction: float = 1 / 4) -> Image.Image:
    """Contrast-limited adaptive histogram equalisation of the lightness channel (CIE L*a*b*).

    The alternative to :func:`ben_graham` common in the fundus literature: contrast is equalised
    in tiles ``kernel_fraction`` x the disc diameter wide (``radius=None``: half the shorter
    side), and ``clip_limit`` stops it from amplifying noise. Equalising only lightness keeps
    the hues (red haemorrhages, yellow exudates) as they were.
    """
    from skimage import color, exposure

    rgb = as_rgb(image)
    lab = color.rgb2lab(np.asarray(rgb, dtype=np.float64) / 255.0)
    kernel = max(4, int(round(kernel_fraction * 2 * _disc_radius(rgb, radius))))
    lab[..., 0] = 100.0 * exposure.equalize_adapthist(lab[..., 0] / 100.0, kernel_size=kernel, clip_limit=clip_limit)
    out = color.lab2rgb(lab)
    return Image.fromarray((out * 255.0).round().clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- photos


def resize_pad(image: Image.Image | np.ndarray, size: int, *, fill: Sequence[int] = (0, 0, 0)) -> Image.Image:
    """Resize so the longer side is ``size`` (aspect ratio kept) and pad to a ``size`` square with ``fill``.

    A plain resize to a square squashes a tall dress; a centre crop cuts off its hem. Padding
    keeps the whole garment undistorted.
    """
    return ImageOps.pad(as_rgb(image), (int(size), int(size)), method=Image.BICUBIC, color=tuple(fill),
                        centering=(0.5, 0.5))


def pad_colour(data_config: Mapping[str, Any]) -> tuple[int, int, int]:
    """The backbone's mean pixel as an RGB 0-255 colour: padding with it becomes zero after normalisation."""
    return tuple(int(round(255 * m)) for m in data_config["mean"])  # type: ignore[return-value]


def tensor_to_image(tensor, data_config: Mapping[str, Any]) -> Image.Image:
    """Undo a backbone's normalisation of a ``(3, H, W)`` tensor, to look at what the network is given."""
    array = np.asarray(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor, dtype=np.float32)
    mean, std = np.asarray(data_config["mean"], np.float32), np.asarray(data_config["std"], np.float32)
    array = array.transpose(1, 2, 0) * std + mean  # (H, W, 3) in [0, 1]
    return Image.fromarray((array * 255).round().clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class ToRGB:
    """Any image (mode, bit depth, EXIF orientation, NumPy array) to upright 8-bit RGB."""

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        return as_rgb(image)


@dataclass(frozen=True)
class Resize:
    """Plain resize to ``size`` x ``size`` (distorts non-square images; fine for square fundus crops)."""

    size: int

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        rgb = as_rgb(image)
        if rgb.size == (self.size, self.size):
            return rgb
        return rgb.resize((self.size, self.size), Image.BICUBIC, reducing_gap=3.0)


@dataclass(frozen=True)
class ResizePad:
    """:func:`resize_pad` as a transform: longer side to ``size``, padded to a square with ``fill``."""

    size: int
    fill: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        return resize_pad(image, self.size, fill=self.fill)


@dataclass(frozen=True)
class FundusCrop:
    """:func:`crop_to_disc` as a transform: the disc centred, radius ``size / (2 * (1 + margin))``.

    Falls back to a centre crop, with a :class:`NoDiscFoundWarning`, when no disc is found.
    """

    size: int = 512
    margin: float = 0.0

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        return crop_to_disc(image, size=self.size, margin=self.margin)


def _with_disc_radius(image: Image.Image | np.ndarray, disc_fraction: float) -> tuple[Image.Image, float]:
    """``image`` as RGB, and the radius of its centred disc: ``disc_fraction`` x half its shorter side."""
    rgb = as_rgb(image)
    return rgb, disc_fraction * min(rgb.size) / 2


@dataclass(frozen=True)
class BenGraham:
    """:func:`ben_graham` for a disc-centred image whose disc radius is ``disc_fraction`` x half its shorter side.

    ``disc_fraction`` is ``1 / (1 + margin)`` after ``FundusCrop(margin=margin)``.
    """

    sigma_fraction: float = 1 / 30
    weight: float = 4.0
    disc_fraction: float = 1.0

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        return ben_graham(*_with_disc_radius(image, self.disc_fraction), sigma_fraction=self.sigma_fraction,
                          weight=self.weight)


@dataclass(frozen=True)
class RingMask:
    """:func:`ring_mask`: ``fill`` outside ``keep`` x the disc radius (``disc_fraction`` as in :class:`BenGraham`)."""

    keep: float = 0.9
    fill: int = 128
    disc_fraction: float = 1.0

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        return ring_mask(*_with_disc_radius(image, self.disc_fraction), keep=self.keep, fill=self.fill)


@dataclass(frozen=True)
class CLAHE:
    """:func:`clahe` with tiles ``kernel_fraction`` x the disc diameter (``disc_fraction`` as in :class:`BenGraham`)."""

    clip_limit: float = 0.01
    kernel_fraction: float = 1 / 4
    disc_fraction: float = 1.0

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        return clahe(*_with_disc_radius(image, self.disc_fraction), clip_limit=self.clip_limit,
                     kernel_fraction=self.kernel_fraction)


VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")
"""Deterministic views of an image (the 8 symmetries of a square). A mirrored clothing photo is still a
valid photo (``identity``, ``hflip``); a fundus photo has no "up", so all 8 are valid views of a retina."""

_TRANSPOSES = {"hflip": Image.Transpose.FLIP_LEFT_RIGHT, "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
               "rot90": Image.Transpose.ROTATE_90, "rot180": Image.Transpose.ROTATE_180,
               "rot270": Image.Transpose.ROTATE_270, "transpose": Image.Transpose.TRANSPOSE,
               "transverse": Image.Transpose.TRANSVERSE}


@dataclass(frozen=True, repr=False)
class View:
    """One of the :data:`VIEWS` of an image (``View("hflip")``: its mirror image): exact, no interpolation.

    A fixed view for test-time or feature-level augmentation; the random flips for training
    CNNs are in :func:`fundus_augmentation` and :func:`clothing_augmentation`. Its ``repr``,
    ``View('hflip')``, keys the caches.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in VIEWS:
            raise ValueError(f"Unknown view {self.name!r}; use one of {VIEWS}.")

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        rgb = as_rgb(image)
        return rgb if self.name == "identity" else rgb.transpose(_TRANSPOSES[self.name])

    def __repr__(self) -> str:
        return f"View({self.name!r})"


@dataclass(frozen=True)
class Compose:
    """Apply ``steps`` in order: a picklable, torch-free ``torchvision.transforms.Compose``.

    It keeps the feature-extraction workers of :mod:`tutorial_lib.handcrafted` from importing
    torch; inside a torchvision or timm pipeline either Compose works.
    """

    steps: tuple[Any, ...]

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        for step in self.steps:
            image = step(image)
        return image


# --------------------------------------------------------------------------- ready-made pipelines


def fundus_pipeline(size: int = 512, *, normalise: str | None = "ben_graham", margin: float = 0.0,
                    mask: bool = True, augment: bool = False):
    """Crop to the disc, optionally augment, normalise (``"ben_graham"``, ``"clahe"`` or ``None``) and mask.

    Returns a :class:`Compose` (PIL image in, PIL image out). Append the backbone's own
    transform (``tl.models.make_transform``) to feed a CNN. Augmentation comes before
    normalisation, so rotated corners are black like the rest of the surround and the ring
    mask hides them.
    """
    if normalise not in ("ben_graham", "clahe", None):
        raise ValueError(f"normalise must be 'ben_graham', 'clahe' or None, not {normalise!r}.")
    fraction = 1.0 / (1.0 + margin)
    steps: list[Any] = [ToRGB(), FundusCrop(size, margin)]
    if augment:
        steps.append(fundus_augmentation())
    if normalise == "ben_graham":
        steps += [BenGraham(disc_fraction=fraction)] + ([RingMask(fill=128, disc_fraction=fraction)] if mask else [])
    elif normalise == "clahe":
        steps += [CLAHE(disc_fraction=fraction)] + ([RingMask(fill=0, disc_fraction=fraction)] if mask else [])
    elif mask:
        steps.append(RingMask(fill=0, disc_fraction=fraction))
    return Compose(tuple(steps))


def clothing_pipeline(size: int = 224, *, fill: Sequence[int] = (0, 0, 0), augment: bool = False):
    """Photos of garments: :class:`ResizePad` to ``size``, then optionally :func:`clothing_augmentation`."""
    steps: list[Any] = [ToRGB(), ResizePad(int(size), tuple(int(v) for v in fill))]  # type: ignore[arg-type]
    if augment:
        steps.append(clothing_augmentation(size))
    return Compose(tuple(steps))


def fundus_augmentation(*, degrees: float = 180.0, brightness: float = 0.1, contrast: float = 0.1):
    """Random flips and rotations of the whole disc, plus mild exposure changes.

    A retina has no "up" that matters for grading and a left eye mirrored looks like a right
    eye, so flips and any rotation about the disc centre give valid new photos. Colour is
    changed only a little: hue carries diagnostic information (red lesions, yellow exudates).
    Apply it to a disc-centred crop (after :class:`FundusCrop`), before normalisation.
    """
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0),
        v2.ColorJitter(brightness=brightness, contrast=contrast),
    ])


def clothing_augmentation(size: int = 224, *, scale: tuple[float, float] = (0.6, 1.0), brightness: float = 0.3,
                          contrast: float = 0.3, saturation: float = 0.3, hue: float = 0.0):
    """Random crops that keep most of the garment, left-right flips and colour jitter; output ``size`` square.

    Cropping and mirroring do not change what a garment is. ``hue`` stays 0 by default: a
    shifted hue turns a red dress blue, harmless for the garment *type* but wrong for colour
    tags (notebook 05).
    """
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(int(size), scale=scale, ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue),
    ])


# --------------------------------------------------------------------------- photographs -> prepared arrays


def prepare_split(split, step: Any, size: int, *, cache_dir: Path | None = None, desc: str = "preparing photos"):
    """Run ``step`` (e.g. ``FundusCrop(224)`` or ``ResizePad(224)``) once on every photograph of ``split``.

    Returns an :class:`~tutorial_lib.data.ImageSplit` of ``size`` x ``size`` uint8 pixel arrays
    (labels and groups kept), cached under ``cache_dir`` by a hash of the files and ``step``, so a
    second run reads it back in a moment. JPEGs are decoded at reduced scale (at least 2 x
    ``size`` a side). Only pixels are kept: no EXIF, no comment, no file name. Photographs in
    which :class:`FundusCrop` finds no disc keep a centred crop and are counted in one
    :class:`NoDiscFoundWarning`. A split of arrays (already small) is returned unchanged.
    """
    from ._io import cache_file, cached_array, fingerprint
    from .progress import tqdm

    if isinstance(split.images, np.ndarray) or not len(split):
        return split
    flags: dict[str, np.ndarray] = {}

    def compute() -> np.ndarray:
        out = np.empty((len(split), int(size), int(size), 3), dtype=np.uint8)
        missed = np.zeros(len(split), dtype=bool)
        for i, path in enumerate(tqdm(split.images, desc=desc, leave=False)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NoDiscFoundWarning)
                image = as_rgb(step(open_image(path, draft=2 * int(size))))
            missed[i] = any(issubclass(w.category, NoDiscFoundWarning) for w in caught)
            out[i] = np.asarray(image.resize((int(size), int(size)), Image.BICUBIC) if image.size != (size, size)
                                else image)
        flags["missed"] = missed
        return out

    key = {"prepared": repr(step), "size": int(size), "data": fingerprint(split.images, split.labels)}
    images = cached_array(cache_file(cache_dir, key) if cache_dir else None, compute)
    missed = cached_array(cache_file(cache_dir, {**key, "part": "no disc found"}) if cache_dir else None,
                          lambda: flags["missed"] if flags else (compute(), flags["missed"])[1])
    if missed.any():
        warnings.warn(f"{desc}: no fundus disc found in {int(missed.sum())} of {len(split)} photographs; "
                      "they were kept with a centred crop.", NoDiscFoundWarning, stacklevel=2)
    return ImageSplit(images, split.labels, split.groups)
