"""The image decoder: any file, PIL image or array to an upright 8-bit RGB PIL image, and file checks.

Every image the package touches goes through :func:`as_rgb` (a file through :func:`open_image`):
greyscale, palette, alpha (composited on white), CMYK, 16-bit and float images, EXIF orientation,
and NumPy arrays of any numeric type all come out the same way. A file that cannot be used raises
a :class:`~tutorial_lib.data.DataError` naming it, or is skipped by the loaders with one warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .registry import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112
_BOMB_FIX = ("if you trust the file, raise the limit before loading (PIL.Image.MAX_IMAGE_PIXELS = None), "
             "or better, save a downscaled copy (a CNN sees a few hundred pixels a side anyway)")


def as_rgb(image: Image.Image | np.ndarray | str | Path) -> Image.Image:
    """Return ``image`` as an upright 8-bit RGB PIL image.

    Accepts a PIL image of any mode (EXIF orientation applied; alpha composited on white;
    16-bit and float images stretched to 0-255), a file path, or a NumPy array shaped
    ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of any numeric dtype
    (floats in ``[0, 1]`` are read as fractions of full scale). An empty image is an error.
    """
    if isinstance(image, (str, Path)):
        return _check_size(open_image(image))
    if isinstance(image, Image.Image):
        return _check_size(_pil_to_rgb(image))
    return _check_size(_array_to_rgb(np.asarray(image)))


def open_image(path: str | Path, *, draft: int | None = None) -> Image.Image:
    """Open any image file as an 8-bit RGB PIL image, upright (EXIF rotation applied).

    Handles greyscale, palette, alpha (composited on white), CMYK and 16-bit images.
    A file that is missing, not an image, damaged or decompression-bomb sized raises
    :class:`DataError` naming the file and the fix, not an error from inside PIL.
    ``draft``: a JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale that keeps both
    sides at least ``draft`` px (a 12-megapixel photo decodes several times faster).
    """
    try:
        with Image.open(path) as img:
            if draft:
                img.draft("RGB", (int(draft), int(draft)))
            return _pil_to_rgb(ImageOps.exif_transpose(img))  # a copy: usable once the file is closed
    except FileNotFoundError as err:
        raise DataError(f"{path} does not exist (moved or deleted since the dataset was listed?). "
                        "Reload the dataset, or restore the file.") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{path} is too large to decode safely ({err}). Fix: {_BOMB_FIX}.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err}). "
                        "Fix: re-export or replace the file, or remove it from the dataset "
                        "(load_dataset skips such files when check_images=True).") from err


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image of any mode, upright and as 8-bit RGB (an RGB image without EXIF rotation comes back as it is)."""
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode == "La":  # premultiplied alpha: Pillow converts it only to LA
        img = img.convert("LA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if hi <= lo else (array - lo) / (hi - lo) * 255.0
        img = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"Cannot read an array shaped {array.shape} as an image; expected (H, W) or (H, W, C) "
                         "with C in 1-4 channels last.")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        values = np.nan_to_num(array.astype(np.float64))
        lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        if np.issubdtype(array.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            values = values * 255.0
        elif lo < 0.0 or hi > 255.0:
            values = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
        array = values.round().clip(0, 255).astype(np.uint8)
    mode = {2: "L"}.get(array.ndim) or {2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(array), mode=mode))


def _check_size(image: Image.Image) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Empty image ({image.width}x{image.height} px): there is nothing to preprocess.")
    return image


# --------------------------------------------------------------------------- files that are not usable images


def check_image_file(path: Path) -> str | None:
    """Return why ``path`` is not a usable image, or ``None`` if it decodes."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced size, still reads all the data
            img.load()
    except Image.DecompressionBombError as err:
        return f"too large to decode safely ({err}); {_BOMB_FIX}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"not a readable image ({type(err).__name__}: {err})"
    return None


def drop_unreadable(files: list[Path], labels: list[str], skipped: list[tuple[Path, str]],
                    check_images: bool) -> tuple[list[Path], list[str]]:
    """Keep the files that decode (all of them without ``check_images``); add the others to ``skipped``."""
    if not check_images:
        return files, labels
    from ..progress import tqdm

    keep = []
    for i, path in enumerate(tqdm(files, desc="checking images", disable=len(files) < 500, leave=False)):
        problem = check_image_file(path)
        if problem:
            skipped.append((path, problem))
        else:
            keep.append(i)
    return [files[i] for i in keep], [labels[i] for i in keep]


def warn_skipped(skipped: list[tuple[Path, str]]) -> None:
    """One warning that lists every skipped file and why."""
    if skipped:
        listing = "\n  ".join(f"{p}: {why}" for p, why in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(f"Skipped {len(skipped)} file(s) that are not usable images:\n  {listing}{more}", stacklevel=3)
