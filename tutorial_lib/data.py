"""Datasets: the embedded sets, a registry of larger public ones, and your own folders.

Introduced in ``00_setup``. Three ways in, one result:

- ``load_dataset("retinamnist")`` / ``load_dataset("clothing")``: the real data shipped
  in the project's ``data/`` folder, checked against ``data/MANIFEST.sha256``.
- ``fetch("retinamnist_224")``: a larger public version, downloaded once with
  its checksum into a user cache (``TUTORIAL_LIB_CACHE`` overrides where).
- ``load_dataset("/my/photos")``: your own class-subfolder tree or CSV manifest.

Each classification set comes back as a :class:`ClassificationData` with
``train``, ``val`` and ``test`` :class:`ImageSplit` objects; the fashion catalogue
(image + several tag columns) as a :class:`TagData`.
"""
from __future__ import annotations

import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field, replace as _replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._io import file_sha256
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FOLDER_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
IMAGE_COLUMN_NAMES = ("image", "path", "filepath", "file", "filename", "image_path")
FASHION_FIELDS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")


class DataError(ValueError):
    """A dataset that cannot be used as it is; the message says which input and what to do."""


class DataUnavailableError(DataError):
    """A registered file is not on this machine and could not be downloaded."""


class ChecksumError(DataError):
    """A file's checksum does not match the registry or the manifest; the file is refused."""


# --------------------------------------------------------------------------- paths


def embedded_data_dir() -> Path:
    """The folder with the embedded datasets (``TUTORIAL_LIB_DATA_DIR`` overrides it)."""
    return Path(os.environ.get("TUTORIAL_LIB_DATA_DIR", PROJECT_ROOT / "data"))


def cache_dir() -> Path:
    """Where downloads go: ``TUTORIAL_LIB_CACHE`` or the user cache, never the notebook folder."""
    import pooch

    return Path(os.environ.get("TUTORIAL_LIB_CACHE") or pooch.os_cache("tutorial_lib"))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives and the hash it must have (``"md5:..."``/``"sha256:..."``)."""

    name: str
    url: str
    known_hash: str


@dataclass(frozen=True)
class DatasetInfo:
    """An entry in the dataset registry."""

    name: str
    kind: str  # "embedded", "download" or "manual"
    task: str  # "dr", "clothing", "tagging" or "other"
    description: str
    licence: str
    citation: str
    files: tuple[RemoteFile, ...] = ()
    manual_steps: str = ""


_MEDMNIST = "https://zenodo.org/records/10519652/files/"
_MEDMNIST_CITE = ("Yang et al., 'MedMNIST v2', Scientific Data 2023; DeepDRiD, Liu et al. 2022. "
                  "https://medmnist.com")
_FASHION_MNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "retinamnist", "embedded", "dr",
            "RetinaMNIST, 1,600 colour fundus photos at 28 px, DR grade 0-4 (official splits 1080/120/400).",
            "CC BY 4.0", _MEDMNIST_CITE),
        DatasetInfo(
            "clothing", "embedded", "clothing",
            "Clothing dataset (small), 10 garment types; the official train, validation and test splits "
            "whole (3068/341/372).",
            "CC0 1.0", "Alexey Grigorev, 'Clothing dataset (small)', https://github.com/alexeygrigorev/clothing-dataset-small"),
        DatasetInfo(
            "fashion", "embedded", "tagging",
            "Fashion Product Images (Small) subset: 224 px catalogue photos with 7 attribute tags "
            "(at most 95 images per article type, seed 0).",
            "MIT (as declared by the source)",
            "Param Aggarwal, 'Fashion Product Images (Small)', Kaggle "
            "(https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-small)"),
        *[
            DatasetInfo(
                f"retinamnist_{size}", "download", "dr",
                f"RetinaMNIST+ at {size} px (MedMNIST+), same 1,600 images and splits as the embedded 28 px set.",
                "CC BY 4.0", _MEDMNIST_CITE,
                files=(RemoteFile(f"retinamnist_{size}.npz", f"{_MEDMNIST}retinamnist_{size}.npz?download=1",
                                  f"md5:{md5}"),))
            for size, md5 in [(64, "afda852cc34dcda56f86ad2b2457dbcc"), (128, "e48e916a24454daf90583d4e6efb1a18"),
                              (224, "eae7e3b6f3fcbda4ae613ebdcbe35348")]
        ],
        DatasetInfo(
            "fashion_mnist", "download", "other",
            "Fashion-MNIST, 70,000 grey 28 px product images in 10 classes (official idx files).",
            "MIT", "Xiao, Rasul and Vollgraf, 'Fashion-MNIST', arXiv:1708.07747",
            files=tuple(RemoteFile(name, _FASHION_MNIST + name, f"md5:{md5}") for name, md5 in [
                ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            ])),
        DatasetInfo(
            "clothing_full", "manual", "clothing",
            "Clothing dataset (full), about 5,000 photos in 20 classes, with images.csv.",
            "CC0 1.0", "Alexey Grigorev, https://github.com/alexeygrigorev/clothing-dataset",
            manual_steps=("git clone --depth 1 https://github.com/alexeygrigorev/clothing-dataset <cache>/clothing_full\n"
                          "(images.csv with image,label columns; photos in images/). Then:\n"
                          "python -m tutorial_lib prepare clothing_full --size 224   "
                          "# or load_registered('clothing_full') in Python")),
        DatasetInfo(
            "eyepacs", "manual", "dr",
            "Kaggle Diabetic Retinopathy Detection (EyePACS), 35,126 training fundus photos, grades 0-4.",
            "Kaggle competition rules (registration required)",
            "https://www.kaggle.com/c/diabetic-retinopathy-detection",
            manual_steps=("Accept the competition rules on its Kaggle page, put your API token in ~/.kaggle/kaggle.json "
                          "(chmod 600), pip install kaggle, then (tens of GB):\n"
                          "kaggle competitions download -c diabetic-retinopathy-detection -p <cache>/eyepacs\n"
                          "cd <cache>/eyepacs && unzip -q diabetic-retinopathy-detection.zip && 7z x train.zip.001 "
                          "&& unzip -q trainLabels.csv.zip   (train.zip.001-005 are one split archive; 7z is p7zip)\n"
                          "(trainLabels.csv with image,level; photos train/<image>.jpeg). Then:\n"
                          "python -m tutorial_lib prepare eyepacs --size 512   # or load_registered('eyepacs')")),
        DatasetInfo(
            "aptos2019", "manual", "dr",
            "APTOS 2019 Blindness Detection, 3,662 labelled fundus photos, grades 0-4.",
            "Kaggle competition rules (registration required)",
            "https://www.kaggle.com/c/aptos2019-blindness-detection",
            manual_steps=("Accept the competition rules on its Kaggle page, put your API token in ~/.kaggle/kaggle.json "
                          "(chmod 600), pip install kaggle, then (several GB):\n"
                          "kaggle competitions download -c aptos2019-blindness-detection -p <cache>/aptos2019\n"
                          "cd <cache>/aptos2019 && unzip -q aptos2019-blindness-detection.zip\n"
                          "(train.csv with id_code,diagnosis; photos train_images/<id_code>.png). Then:\n"
                          "python -m tutorial_lib prepare aptos2019 --size 512   # or load_registered('aptos2019')")),
        DatasetInfo(
            "fashion_products_full", "manual", "tagging",
            "Fashion Product Images, the whole catalogue: 44,000 images with the same 7 tag columns.",
            "MIT (as declared by the source)",
            "https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-dataset",
            manual_steps=("Put your Kaggle API token in ~/.kaggle/kaggle.json (chmod 600), pip install kaggle, then "
                          "(tens of GB; the -small dataset has the same layout with smaller photos):\n"
                          "kaggle datasets download -d paramaggarwal/fashion-product-images-dataset "
                          "-p <cache>/fashion_products_full --unzip\n"
                          "(fashion-dataset/styles.csv with id and tag columns; photos fashion-dataset/images/<id>.jpg). "
                          "Then:\npython -m tutorial_lib prepare fashion_products_full --size 224   "
                          "# classes: articleType; or load_registered('fashion_products_full')")),
    ]
}


def list_datasets() -> pd.DataFrame:
    """The registry as a table: name, kind, task, description, licence."""
    rows = [{"name": i.name, "kind": i.kind, "task": i.task, "description": i.description, "licence": i.licence}
            for i in REGISTRY.values()]
    return pd.DataFrame(rows).set_index("name")


def _hash_matches(path: Path, known_hash: str) -> bool:
    import pooch

    algorithm, _, expected = known_hash.partition(":")
    return pooch.file_hash(str(path), alg=algorithm).lower() == expected.lower()


def fetch(name: str, *, download: bool = True) -> list[Path]:
    """Return local paths of a registered dataset's files, downloading them with checksums if needed.

    A file already in the cache is used only if its checksum matches. Offline, a
    missing file raises :class:`DataUnavailableError` at once with the file name,
    its URL and where to put it by hand.
    """
    import pooch

    info = _registry_entry(name)
    target = cache_dir() / info.name
    if info.kind == "embedded":
        raise DataError(f"{name!r} is embedded in the project: use load_dataset({name!r}).")
    if info.kind == "manual":
        raise DataUnavailableError(
            f"{name!r} cannot be downloaded automatically ({info.licence}).\n"
            + info.manual_steps.replace("<cache>", str(cache_dir())))
    paths = []
    _remove_stale_partials(target)
    for remote in info.files:
        local = target / remote.name
        refused = ""
        if local.exists():
            if _hash_matches(local, remote.known_hash):
                paths.append(local)
                continue
            refused = f"{local} does not match its registered checksum {remote.known_hash}"
            if not download:
                raise ChecksumError(f"{refused}; it was not used. Delete it and download it again from {remote.url}")
            warnings.warn(f"{refused} (a damaged or partial copy): removed it and downloading it again.",
                          stacklevel=2)
            local.unlink()
        if not download:
            raise DataUnavailableError(_missing_message(remote, local))
        try:
            # pooch downloads to a temporary file and renames it only once the hash matches
            paths.append(Path(pooch.retrieve(remote.url, known_hash=remote.known_hash, fname=remote.name,
                                              path=target, progressbar=True)))
        except ValueError as err:  # pooch: hash mismatch after download (the bad file is removed)
            raise ChecksumError(f"Download of {remote.url} did not match {remote.known_hash}: {err}") from err
        except Exception as err:  # network errors come in many types (requests, urllib, OSError)
            message = _missing_message(remote, local) + f"\n(download error: {err})"
            if refused:  # the damaged copy is gone, the fresh one did not come
                raise ChecksumError(f"{refused}; it was removed, and downloading it again failed.\n{message}") from err
            raise DataUnavailableError(message) from err
    return paths


def _remove_stale_partials(folder: Path, older_than_s: float = 600.0) -> None:
    """Delete pooch's temporary files (``tmp*``) left by a killed download; a live download keeps its file fresh."""
    import time

    if not folder.is_dir():
        return
    for leftover in folder.glob("tmp*"):
        try:
            if leftover.is_file() and time.time() - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
        except OSError:
            pass  # another process removed or renamed it first


def _missing_message(remote: RemoteFile, local: Path) -> str:
    return (f"{remote.name} is not on this machine and could not be downloaded.\n"
            f"  URL:  {remote.url}\n"
            f"  Fix:  download it on a machine with internet access and put it at {local}\n"
            f"        (checksum {remote.known_hash}; set TUTORIAL_LIB_CACHE to use another cache folder).")


def _registry_entry(name: str) -> DatasetInfo:
    if name not in REGISTRY:
        raise DataError(f"Unknown dataset {name!r}. Registered: {', '.join(REGISTRY)}; "
                        "or pass the path of your own folder or CSV manifest.")
    return REGISTRY[name]


class UnsafeArchiveError(DataError):
    """An archive member would land outside the destination folder (path traversal) or is a link or device."""


def extract_archive(archive: str | Path, destination: str | Path) -> Path:
    """Extract a ``.zip`` or ``.tar[.gz|.bz2|.xz]`` into ``destination`` safely; return ``destination``.

    Every member is checked first: an absolute path, a ``..`` that climbs out of
    ``destination``, a link or a device file refuses the whole archive with
    :class:`UnsafeArchiveError` naming the member, and nothing is written. Use it
    instead of ``unzip`` on archives downloaded from the web (e.g. Kaggle's).
    """
    import tarfile

    archive, destination = Path(archive), Path(destination)
    root = destination.resolve()

    def check(name: str) -> None:
        target = (root / name).resolve()
        if Path(name).is_absolute() or name.startswith(("/", "\\")) or not target.is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {destination} "
                                     "(path traversal); nothing was extracted. Do not use this archive.")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                check(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symbolic link stored in the zip
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; "
                                             "nothing was extracted.")
            destination.mkdir(parents=True, exist_ok=True)
            zf.extractall(destination)
        return destination
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{archive} is neither a zip nor a tar archive ({err}); download it again.") from err
    with tf:
        for member in tf.getmembers():
            check(member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; "
                                         "nothing was extracted.")
        destination.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library's own guard as well
            tf.extractall(destination, filter="data")
        else:
            tf.extractall(destination)  # every member was checked above
    return destination


# --------------------------------------------------------------------------- manifest checks


def _read_manifest(data_dir: Path) -> dict[str, str]:
    manifest = data_dir / "MANIFEST.sha256"
    if not manifest.exists():
        raise DataUnavailableError(f"{manifest} is missing; the embedded data cannot be verified. "
                                   "Restore it with `git checkout -- data/`.")
    entries = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            entries[rel.strip()] = digest
    return entries


def verify_embedded(prefix: str, data_dir: Path | None = None) -> list[Path]:
    """Check every manifest entry under ``prefix`` (e.g. ``"clothing/"``); return the verified files.

    Missing or altered files are refused with a :class:`ChecksumError` that lists them.
    """
    data_dir = data_dir or embedded_data_dir()
    entries = {rel: d for rel, d in _read_manifest(data_dir).items() if rel.startswith(prefix)}
    if not entries:
        raise DataUnavailableError(f"No files under {prefix!r} in {data_dir / 'MANIFEST.sha256'}.")
    bad, good = [], []
    for rel, expected in sorted(entries.items()):
        path = data_dir / rel
        if not path.exists():
            bad.append(f"{rel} (missing)")
            continue
        if file_sha256(path) != expected:
            bad.append(f"{rel} (checksum mismatch)")
        else:
            good.append(path)
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ChecksumError(f"{len(bad)} embedded file(s) failed verification and were refused:\n  {shown}\n"
                            "Fix: restore them with `git checkout -- data/` (or re-clone the project).")
    return good


# --------------------------------------------------------------------------- images


_BOMB_FIX = ("if you trust the file, raise the limit before loading (PIL.Image.MAX_IMAGE_PIXELS = None), "
             "or better, save a downscaled copy (a CNN sees a few hundred pixels a side anyway)")


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
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except FileNotFoundError as err:
        raise DataError(f"{path} does not exist (moved or deleted since the dataset was listed?). "
                        "Reload the dataset, or restore the file.") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"{path} is too large to decode safely ({err}). Fix: {_BOMB_FIX}.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path} is not a readable image ({type(err).__name__}: {err}). "
                        "Fix: re-export or replace the file, or remove it from the dataset "
                        "(load_dataset skips such files when check_images=True).") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB."""
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


# --------------------------------------------------------------------------- containers


@dataclass
class ImageSplit:
    """One split of a classification set: images (file paths or a uint8 array) and integer labels."""

    images: np.ndarray | list[Path]
    labels: np.ndarray
    groups: np.ndarray | None = None  # e.g. the patient of each image (see group_ids); None: every image its own

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image as an RGB PIL image."""
        item = self.images[index]
        if isinstance(item, (str, Path)):
            return open_image(item)
        return Image.fromarray(np.asarray(item, dtype=np.uint8)).convert("RGB")

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSplit":
        """A new split holding only ``indices`` (e.g. a quick profile's smaller sample)."""
        indices = np.asarray(indices, dtype=int)
        if isinstance(self.images, np.ndarray):
            images: np.ndarray | list[Path] = self.images[indices]
        else:
            images = [self.images[i] for i in indices]
        return ImageSplit(images, self.labels[indices], None if self.groups is None else self.groups[indices])


@dataclass
class ClassificationData:
    """A classification dataset with train / val / test splits."""

    name: str
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    split_note: str = "official splits"
    info: DatasetInfo | None = None

    @property
    def splits(self) -> dict[str, ImageSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def class_counts(self) -> pd.DataFrame:
        """Images per class (rows) and split (columns)."""
        counts = {name: np.bincount(s.labels, minlength=len(self.classes)) for name, s in self.splits.items()}
        return pd.DataFrame(counts, index=pd.Index(self.classes, name="class"))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"ClassificationData({self.name!r}, {len(self.classes)} classes, {sizes}; {self.split_note})"


@dataclass
class TagData:
    """Images with several tag columns (one value per field), e.g. the fashion catalogue."""

    name: str
    table: pd.DataFrame  # column "path" plus one column per field
    fields: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped
    info: DatasetInfo | None = None

    def __len__(self) -> int:
        return len(self.table)

    def image(self, index: int) -> Image.Image:
        return open_image(self.table["path"].iloc[index])

    def __repr__(self) -> str:
        return f"TagData({self.name!r}, {len(self)} images, fields={self.fields})"


# --------------------------------------------------------------------------- loaders


def load_dataset(source: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 check_images: bool = True, group_pattern: str | None = None, **csv_options) -> ClassificationData:
    """Load a classification dataset by registry name, folder or CSV manifest.

    - ``"retinamnist"``, ``"clothing"``: embedded, verified against the manifest.
    - A folder: class subfolders, optionally inside a ``train/`` folder with ``val/`` (``valid/``,
      ``validation/``) and/or ``test/`` beside it, in any case; the split a layout lacks comes
      out of train. Without split folders, a seeded stratified split is made. Every class
      keeps a training and a validation image, or a DataError names the class.
    - A ``.csv`` file: an image column and a label column (see :func:`load_csv_manifest`).
    Unreadable files in your own data are skipped with one warning that lists them.

    ``group_pattern`` (a regular expression, e.g. ``r"Patient(\\d+)"``; see :func:`group_ids`) or a
    ``group`` column in a CSV manifest names the group of each image (the patient whose two eyes
    must not be split): the seeded split then keeps every group on one side.
    """
    name = str(source)
    if name in REGISTRY:
        info = REGISTRY[name]
        if info.kind != "embedded":
            raise DataError(f"{name!r} is not embedded: call fetch({name!r}) first "
                            "and load the files it returns (see the registry's manual_steps).")
        if name == "retinamnist":
            return load_retinamnist()
        if name == "clothing":
            verify_embedded("clothing/")
            data = load_image_folder(embedded_data_dir() / "clothing", seed=seed, check_images=False)
            data.name, data.info = name, info
            return data
        raise DataError(f"{name!r} is a tagging dataset: use load_tag_dataset({name!r}).")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. Pass a registered name ({', '.join(REGISTRY)}), "
                        "a folder of class subfolders, or a CSV manifest.")
    if path.is_dir():
        return load_image_folder(path, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                 check_images=check_images, group_pattern=group_pattern)
    if path.suffix.lower() == ".csv":
        return load_csv_manifest(path, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                 check_images=check_images, group_pattern=group_pattern, **csv_options)
    raise DataError(f"{path} is neither a folder nor a .csv manifest.")


def group_ids(files: Sequence[Path], pattern: str, root: Path) -> np.ndarray:
    """The group of each file: regular expression ``pattern`` searched in the file's path relative to ``root``.

    The rule: the first capturing group of the first match is the group id (the whole match
    when the pattern has no group), so ``r"Patient(\\d+)"`` puts ``Patient7_L.jpg`` and
    ``Patient7_R.jpg`` together. A pattern that matches no file is an error naming it and an
    example file; files it does not match become groups of their own, with a warning.
    """
    import re

    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DataError(f"GROUP_PATTERN {pattern!r} is not a valid regular expression ({err}).") from err
    relative = [Path(f).relative_to(root).as_posix() if Path(f).is_relative_to(root) else Path(f).name for f in files]
    matches = [regex.search(r) for r in relative]
    if files and not any(matches):
        raise DataError(f"GROUP_PATTERN {pattern!r} matches none of the {len(files)} file names, e.g. {relative[0]!r} "
                        f"(searched in the path relative to {root}). Fix the pattern, e.g. r\"Patient(\\d+)\" for "
                        "Patient12_L.jpg, or leave it empty to split image by image.")
    unmatched = [r for r, m in zip(relative, matches) if m is None]
    if unmatched:
        warnings.warn(f"GROUP_PATTERN {pattern!r} does not match {len(unmatched)} file(s), e.g. {unmatched[0]!r}; "
                      "each of them is a group of its own.", stacklevel=3)
    return np.array([(m.group(1) if m.re.groups else m.group(0)) if m else f"<file> {r}"
                     for r, m in zip(relative, matches)], dtype=object)


def load_retinamnist(path: Path | None = None) -> ClassificationData:
    """The embedded RetinaMNIST (or another MedMNIST-style ``.npz`` with the same keys)."""
    if path is None:
        path = verify_embedded("retinamnist/")[0]
    fix = "re-download it (fetch) or restore it with `git checkout -- data/`"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a single .npy array under an .npz name
            raise ValueError("it holds one array, not named arrays")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not a readable .npz file ({type(err).__name__}: {err}); {fix}.") from err
    splits = {}
    n_classes = 5
    for split in ("train", "val", "test"):
        try:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
        except KeyError as err:
            raise DataError(f"{path} lacks the key {err.args[0]!r}; a MedMNIST file has "
                            f"train/val/test _images and _labels (this one has {sorted(arrays)}).") from err
        if images.ndim not in (3, 4) or images.dtype != np.uint8 or len(images) != len(labels):
            raise DataError(f"{path}: {split}_images has shape {images.shape} ({images.dtype}) for "
                            f"{len(labels)} labels; expected uint8 (N, H, W[, 3]) with N = {len(labels)}. {fix}.")
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                            or labels.max() >= n_classes):
            raise DataError(f"{path}: {split}_labels must be integer grades 0-{n_classes - 1}; found values "
                            f"{np.unique(labels)[:10].tolist()}. {fix}.")
        if images.ndim == 3:  # greyscale MedMNIST sets
            images = np.repeat(images[..., None], 3, axis=-1)
        splits[split] = ImageSplit(images, labels.astype(np.int64))
    classes = [f"grade {g}" for g in range(n_classes)]
    return ClassificationData("retinamnist", classes, splits["train"], splits["val"], splits["test"],
                              info=REGISTRY["retinamnist"])


def is_hidden(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``._x.jpg``, ``__MACOSX``) are ignored silently."""
    return name.startswith(".") or name.startswith("__")


def _link_problem(path: Path, root: Path) -> str | None:
    """Why the symbolic link ``path`` is not followed (``None``: follow it)."""
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a loop this way; 3.13 as OSError
        return "symbolic link loop: not followed"
    except OSError as err:
        return ("symbolic link loop: not followed" if getattr(err, "errno", None) == 40
                else "broken symbolic link (its target does not exist)")
    real_root = root.resolve()
    if target.is_dir() and (target == real_root or target in real_root.parents or real_root in target.parents):
        return ("symbolic link to a folder inside or above the dataset folder: not followed "
                "(its images would count twice)")
    return None


def _walk_files(folder: Path, root: Path, skipped: list[tuple[Path, str]], seen: set[Path]) -> list[Path]:
    """The non-hidden files under ``folder``; links that dangle, loop or point back into ``root`` go to ``skipped``."""
    found = []
    for path in sorted(folder.iterdir()):
        if is_hidden(path.name):
            continue
        if path.is_symlink():
            problem = _link_problem(path, root)
            if problem:
                skipped.append((path, problem))
                continue
        if path.is_dir():
            real = path.resolve()
            if real not in seen:  # a link to a folder outside ``root`` is followed once
                seen.add(real)
                found += _walk_files(path, root, skipped, seen)
        elif path.is_file():
            found.append(path)
    return found


def _scan_class_folders(root: Path) -> tuple[list[Path], list[str], list[tuple[Path, str]]]:
    """Image files and their class names under ``root/<class>/``, plus the skipped files and why."""
    skipped: list[tuple[Path, str]] = []
    class_dirs = []
    for p in sorted(root.iterdir()):
        if is_hidden(p.name):
            continue
        problem = _link_problem(p, root) if p.is_symlink() else None
        if problem:
            skipped.append((p, problem))
        elif p.is_dir():
            class_dirs.append(p)
    if not class_dirs:
        raise DataError(f"{root} has no class subfolders. Lay your images out as {root}/<class name>/<image>.")
    files, labels = [], []
    for class_dir in class_dirs:
        found = 0
        for path in _walk_files(class_dir, root, skipped, {class_dir.resolve()}):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((path, "not an image file extension"))
                continue
            files.append(path)
            labels.append(class_dir.name)
            found += 1
        if found == 0:
            raise DataError(f"Class folder {class_dir} holds no images. Add images or remove the folder.")
    return files, labels, skipped


def _drop_unreadable(files: list[Path], labels: list[str], skipped: list[tuple[Path, str]],
                     check_images: bool) -> tuple[list[Path], list[str]]:
    """Keep the files that decode; add the others to ``skipped``."""
    if not check_images:
        return files, labels
    from .progress import tqdm

    keep = []
    for i, path in enumerate(tqdm(files, desc="checking images", disable=len(files) < 500, leave=False)):
        problem = check_image_file(path)
        if problem:
            skipped.append((path, problem))
        else:
            keep.append(i)
    return [files[i] for i in keep], [labels[i] for i in keep]


def _warn_skipped(skipped: list[tuple[Path, str]]) -> None:
    """One warning that lists every skipped file and why."""
    if skipped:
        listing = "\n  ".join(f"{p}: {why}" for p, why in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(f"Skipped {len(skipped)} file(s) that are not usable images:\n  {listing}{more}", stacklevel=3)


def _tree(root: Path, depth: int = 2, limit: int = 12) -> str:
    """A few lines showing the folders under ``root`` (for error messages about the layout)."""
    lines = [f"{root}/"]

    def walk(folder: Path, level: int) -> None:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))
        for sub in subs[:limit]:
            n = sum(1 for f in sub.iterdir() if f.is_file())
            lines.append(f"{'  ' * level}{sub.name}/" + (f" ({n} files)" if n else ""))
            if level < depth:
                walk(sub, level + 1)
        if len(subs) > limit:
            lines.append(f"{'  ' * level}... and {len(subs) - limit} more folders")

    walk(root, 1)
    return "\n  ".join(lines)


def _find_split_folders(root: Path) -> dict[str, Path]:
    """``train``/``val``/``test`` folders under ``root``, matched without regard to case (``Train``, ``valid``,
    ``Validation``). Empty: a plain class-folder tree. A mix, or two folders for one split, is a DataError."""
    aliases = {name: split for split, names in SPLIT_FOLDER_NAMES.items() for name in names}
    found: dict[str, Path] = {}
    others = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name)):
        split = aliases.get(folder.name.strip().lower())
        if split is None:
            others.append(folder.name)
        elif split in found:
            raise DataError(f"{root}: both {found[split].name}/ and {folder.name}/ look like the {split} split; keep "
                            f"one. The folders seen:\n  {_tree(root)}")
        else:
            found[split] = folder
    if found and (others or "train" not in found or len(found) < 2):
        raise DataError(f"{root} mixes split folders ({', '.join(p.name for p in found.values())}) with "
                        f"{'other folders ' + str(others) if others else 'too few of them'}. Use either class "
                        "folders only, or a train/ folder with val/ and/or test/ beside it, each holding class "
                        f"folders. The folders seen:\n  {_tree(root)}")
    return found


def _carve(splits: dict[str, "ImageSplit"], fraction: float, seed: int) -> "ImageSplit":
    """Take a seeded stratified ``fraction`` of the training split out (as the split the folders lack)."""
    train = splits["train"]
    keep, held = _stratified_split(np.arange(len(train)), train.labels, fraction, seed, train.groups)
    splits["train"] = train.subset(keep)
    return train.subset(held)


def load_image_folder(root: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      check_images: bool = True, group_pattern: str | None = None) -> ClassificationData:
    """Load a class-subfolder tree (see :func:`load_dataset`; ``group_pattern`` as in :func:`group_ids`)."""
    root = Path(root)
    split_dirs = _find_split_folders(root)
    skipped: list[tuple[Path, str]] = []
    if not split_dirs:
        files, labels, skipped = _scan_class_folders(root)
        files, labels = _drop_unreadable(files, labels, skipped, check_images)
        _warn_skipped(skipped)
        _warn_similar_labels(labels, root)
        groups = group_ids(files, group_pattern, root) if group_pattern else None
        data = _rebalance(_split_seeded(root.name, files, labels, seed, val_fraction, test_fraction, groups,
                                        group_pattern), seed, ("train", "val", "test"))
        _check_trainable(data, root, val_fraction)
        return data
    scanned: dict[str, tuple[list[Path], list[str]]] = {}
    for split, folder in split_dirs.items():
        files, labels, skip = _scan_class_folders(folder)
        skipped += skip
        scanned[split] = _drop_unreadable(files, labels, skipped, check_images)
    _warn_skipped(skipped)
    _warn_similar_labels([c for _, labels in scanned.values() for c in labels], root)
    classes = sort_classes(scanned["train"][1])
    _check_classes(classes, {s: labels for s, (_, labels) in scanned.items()}, root)
    index = {c: i for i, c in enumerate(classes)}
    splits = {s: ImageSplit(files, np.array([index[c] for c in labels], dtype=np.int64),
                            group_ids(files, group_pattern, root) if group_pattern else None)
              for s, (files, labels) in scanned.items()}
    names = "/".join(p.name for p in split_dirs.values())
    note = "folder splits"
    if "test" not in splits:  # e.g. Keras' train/ + validation/: the test split comes out of train
        splits["test"] = _carve(splits, test_fraction, seed)
        note = f"folder {names}; test: seeded stratified {test_fraction:.0%} of train (seed {seed})"
    if "val" not in splits:
        _check_trainable(ClassificationData(root.name, classes, splits["train"], splits["train"], splits["test"]),
                         root, val_fraction, before_val=True)
        splits["val"] = _carve(splits, val_fraction, seed)
        note = f"folder {names}; validation: seeded stratified {val_fraction:.0%} of train (seed {seed})"
    if group_pattern:
        _warn_groups_across_folders(splits, group_pattern, root)
    data = ClassificationData(root.name, classes, splits["train"], splits["val"], splits["test"], note)
    if "val" not in split_dirs:
        data = _rebalance(data, seed)
    _check_trainable(data, root, val_fraction)
    return data


def _rebalance(data: ClassificationData, seed: int, movable: Sequence[str] = ("train", "val")) -> ClassificationData:
    """Move images between seeded splits where a class has no training or no validation image.

    On tiny data the split cannot be stratified, and a class may end with no validation (or no
    training) image; one of its images (chosen with ``seed``) then comes from the ``movable`` split
    that has the most of them, if that split keeps one. With groups (a patient's photos) the whole
    group moves, so no group ends on two sides. Splits the user made are not ``movable``.
    """
    splits = dict(data.splits)
    rng = np.random.default_rng(seed)
    for c in range(len(data.classes)):
        for dst in ("train", "val"):
            if (splits[dst].labels == c).any():
                continue
            src = max((s for s in movable if s != dst), key=lambda s: int((splits[s].labels == c).sum()))
            split, target = splits[src], splits[dst]
            have = np.flatnonzero(split.labels == c)
            if not len(have):
                continue
            i = int(rng.choice(have))
            move = np.flatnonzero(split.groups == split.groups[i]) if split.groups is not None else np.array([i])
            stay = np.setdiff1d(np.arange(len(split)), move)
            if not (split.labels[stay] == c).any():
                continue  # the source split would lose its last image of the class
            groups = None if split.groups is None or target.groups is None else \
                np.concatenate([target.groups, split.groups[move]])
            splits[dst] = ImageSplit(list(target.images) + [split.images[j] for j in move],
                                     np.concatenate([target.labels, split.labels[move]]), groups)
            splits[src] = split.subset(stay)
    note = data.split_note
    if "groups per split" in note:  # the counts as they are after any move
        counts = ", ".join(f"{s} {len(set(split.groups))}" for s, split in splits.items())
        note = note[:note.index("groups per split")] + f"groups per split {counts}"
    return _replace(data, **splits, split_note=note)


def _warn_groups_across_folders(splits: dict[str, "ImageSplit"], group_pattern: str, root: Path) -> None:
    """Warn when the user's split folders put one group (a patient) on two sides: the folders' split leaks it."""
    sides = [set(s.groups) for s in splits.values()]
    shared = set().union(*(a & b for i, a in enumerate(sides) for b in sides[i + 1:]))
    if shared:
        warnings.warn(f"{root}: {len(shared)} group(s) of GROUP_PATTERN {group_pattern!r} have images in two "
                      f"split folders (e.g. {sorted(shared)[0]!r}): the folders' split leaks them. Move them, or "
                      "drop the split folders to split by group.", stacklevel=3)


def _check_trainable(data: ClassificationData, source: Path, val_fraction: float, before_val: bool = False) -> None:
    """Every class keeps at least one training and one validation image, or say which class needs more."""
    n = len(data.classes)
    train = np.bincount(data.train.labels, minlength=n)
    if before_val:  # validation is still to be carved out of train: each class needs 2 there
        short = [(c, int(k)) for c, k in zip(data.classes, train) if k < 2]
        if short:
            listing = ", ".join(f"{c!r} ({k} training image{'s' * (k != 1)})" for c, k in short)
            raise DataError(f"{source}: class(es) {listing} are too small: validation is taken out of the training "
                            "images, so every class needs at least 2 there (1 to train on, 1 to validate). Add "
                            "images to those classes, or give a val/ folder.")
        return
    val = np.bincount(data.val.labels, minlength=n)
    short = [(c, int(t), int(v)) for c, t, v in zip(data.classes, train, val) if t < 1 or v < 1]
    if short:
        listing = ", ".join(f"{c!r} ({t} train, {v} validation)" for c, t, v in short)
        need = max(2, math.ceil(1 / max(val_fraction, 1e-9)))
        raise DataError(f"{source}: class(es) {listing} lack a training or a validation image; every class needs "
                        f"at least one of each. Add images (with val_fraction {val_fraction:g}, about {need} per "
                        "class makes one validation image each), or put some in the val/ folder or split column.")


def _warn_similar_labels(labels: Sequence[str], source: Path) -> None:
    """Warn about class names that differ only by case, spaces or number format (``A``/``a``, ``1``/``1.0``)."""
    def key(label: str) -> str:
        text = str(label).strip().casefold()
        try:
            return repr(float(text))
        except ValueError:
            return text

    groups: dict[str, set[str]] = {}
    for label in set(labels):
        groups.setdefault(key(label), set()).add(label)
    similar = [sorted(g) for g in groups.values() if len(g) > 1]
    if similar:
        warnings.warn(f"{source}: labels {similar} differ only by case, spaces or number format, and are treated "
                      "as different classes. If they are the same class, write them the same way.", stacklevel=3)


def sort_classes(names: set[str] | Sequence[str]) -> list[str]:
    """Class names in a stable order: numerically when all are integers (``"2"`` before ``"10"``), else by text.

    The order is the class index, and ordinal code (DR grades) relies on it.
    """
    names = sorted(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


def _check_classes(train_classes: list[str], labels_by_split: dict[str, list[str]], source: Path) -> None:
    """At least two training classes, and no class outside train that train lacks."""
    if len(train_classes) < 2:
        raise DataError(f"{source}: the training split has {len(train_classes)} class(es) {train_classes}; "
                        "a classifier needs at least 2.")
    others = {c for split, labels in labels_by_split.items() if split != "train" for c in labels}
    unknown = sorted(others - set(train_classes))
    if unknown:
        raise DataError(f"{source}: class(es) {unknown} appear in validation/test but not in train. "
                        "Add training images for them or remove them from the other splits.")


def _stratified_split(indices: np.ndarray, y: np.ndarray, fraction: float, seed: int,
                      groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

    if groups is not None:  # every group on one side; stratified as far as whole groups allow
        n_groups, n_folds = len(set(groups)), max(2, round(1 / fraction))
        if n_groups < 2:
            raise DataError(f"All {len(y)} images are in one group: they cannot be split into train, validation "
                            "and test. Check GROUP_PATTERN (or the CSV's group column).")
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed) if n_groups >= n_folds \
            else GroupShuffleSplit(1, test_size=fraction, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn: "the least populated class has only ..."
            keep, held = next(splitter.split(indices, y, groups))
        return np.sort(indices[keep]), np.sort(indices[held])

    counts = np.bincount(y)
    n_classes, n_held = int((counts > 0).sum()), math.ceil(fraction * len(y))
    # stratify only where every class can be on both sides (sklearn raises otherwise, e.g. on 9 images)
    can_stratify = counts[counts > 0].min() >= 2 and n_classes <= n_held <= len(y) - n_classes
    keep, held = train_test_split(indices, test_size=fraction, random_state=seed,
                                  stratify=y if can_stratify else None)
    return np.sort(keep), np.sort(held)


def _split_seeded(name: str, files: list, labels: Sequence[str], seed: int, val_fraction: float,
                  test_fraction: float, groups: np.ndarray | None = None,
                  grouped_by: str | None = None) -> ClassificationData:
    if not files:
        raise DataError(f"{name}: no usable images were found (see the warning above for skipped files). "
                        "Add images, or check the folder or the CSV's image column.")
    classes = sort_classes(labels)
    if len(classes) < 2:
        raise DataError(f"{name}: found only the class {classes}; a classifier needs at least 2 classes.")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in labels], dtype=np.int64)
    small = [c for c, n in zip(classes, np.bincount(y)) if n < 3]
    if small:
        raise DataError(f"{name}: class(es) {small} have fewer than 3 images; a train/val/test split needs at "
                        "least 3 per class. Add images or remove those classes.")
    all_idx = np.arange(len(y))
    rest, test = _stratified_split(all_idx, y, test_fraction, seed, groups)
    train, val = _stratified_split(rest, y[rest], val_fraction / (1 - test_fraction), seed,
                                   None if groups is None else groups[rest])
    splits = {s: ImageSplit([files[i] for i in idx], y[idx], None if groups is None else groups[idx]) for s, idx in
              [("train", train), ("val", val), ("test", test)]}
    note = f"seeded stratified split {1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%} (seed {seed})"
    if groups is not None:
        counts = ", ".join(f"{s} {len(set(split.groups))}" for s, split in splits.items())
        note += f", grouped by {grouped_by or 'the group column'}: groups per split {counts}"
    return ClassificationData(name, classes, splits["train"], splits["val"], splits["test"], note)


def _read_csv(path: Path, *, skipped: list[list[str]] | None = None) -> pd.DataFrame:
    """``path`` as a table of strings. With ``skipped``, rows with more fields than the header (an unquoted
    comma in a text column) are collected there and left out, instead of failing the whole file."""
    lenient = {} if skipped is None else {"on_bad_lines": skipped.append, "engine": "python"}
    try:
        # utf-8-sig: spreadsheet programs start UTF-8 CSV files with a byte-order mark
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig",
                            **lenient)
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path} is empty. A manifest needs a header row and one row per image.") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path} could not be read as CSV ({type(err).__name__}: {err}). "
                        "Fix: save it as comma-separated UTF-8 text (spreadsheet: 'CSV UTF-8').") from err
    if len(table.columns) == 1 and skipped is None:  # one column: perhaps another separator (; from a spreadsheet)
        sep = next((c for c in (";", "\t", "|") if c in table.columns[0]), None)
        if sep is not None:
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                                encoding="utf-8-sig")
    if table.empty:
        raise DataError(f"{path} has a header but no rows. Add one row per image.")
    table.columns = [c.strip() for c in table.columns]
    return table


def _resolve_image_column(table: pd.DataFrame, image_column: str | None, source: Path) -> str:
    if image_column is not None:
        if image_column not in table.columns:
            raise DataError(f"{source} has no column {image_column!r}; its columns are {list(table.columns)}.")
        return image_column
    for candidate in IMAGE_COLUMN_NAMES:
        if candidate in table.columns:
            return candidate
    hint = (" It has a single column: the file is read as comma-separated; save it with commas (or ;, tab, |)."
            if len(table.columns) == 1 else "")
    raise DataError(f"{source} has no image column: name one of {IMAGE_COLUMN_NAMES} or pass image_column=...; "
                    f"its columns are {list(table.columns)}.{hint}")


def _image_paths(table: pd.DataFrame, column: str, base: Path, suffix: str) -> list[Path]:
    """The images of ``column``, trimmed, with ``\\`` as ``/``, ``./`` and ``//`` removed, absolute and resolved:
    ``imgs/a/0.jpg``, ``./imgs/a/0.jpg``, ``imgs//a/0.jpg`` and ``imgs\\a\\0.jpg `` are one image."""
    paths = []
    for value in table[column]:
        value = os.path.normpath(value.strip().replace("\\", "/"))
        p = Path(value + suffix if suffix and not value.endswith(suffix) else value)
        paths.append((p if p.is_absolute() else base / p).resolve())
    return paths


def load_csv_manifest(path: str | Path, *, image_column: str | None = None, label_column: str = "label",
                      split_column: str = "split", image_folder: str = "", image_suffix: str = "",
                      classes: Sequence[str] | None = None, seed: int = 0, val_fraction: float = 0.1,
                      test_fraction: float = 0.2, check_images: bool = True, group_column: str = "group",
                      group_pattern: str | None = None) -> ClassificationData:
    """Load a CSV manifest with an image column and a label column.

    Image paths are relative to the CSV's folder (plus ``image_folder``); ``image_suffix``
    is appended to ids without one. A ``split`` column with train/val/test values is
    honoured; otherwise a seeded stratified split is made. ``classes`` restricts labels to
    a known list. Duplicate rows are dropped with a warning; a blank label, an unknown
    label or a missing column is an error that names it. A ``group_column`` (e.g. the patient), or
    ``group_pattern`` searched in the image paths (:func:`group_ids`), keeps each group on one side of the
    seeded split.
    """
    path = Path(path)
    table = _read_csv(path)
    column = _resolve_image_column(table, image_column, path)
    if label_column not in table.columns:
        raise DataError(f"{path} has no label column {label_column!r}; pass label_column=... "
                        f"(its columns are {list(table.columns)}).")
    has_groups = group_column in table.columns
    for name in (column, label_column, *([group_column] if has_groups else [])):
        blank = table.index[table[name].str.strip() == ""].tolist()
        if blank:
            raise DataError(f"{path}: blank {name!r} in data row(s) {[i + 1 for i in blank[:10]]}. "
                            "Fill them in or delete those rows.")
    base = path.parent / image_folder
    written = table[column].copy()
    table[column] = [str(f) for f in _image_paths(table, column, base, image_suffix)]  # compared as resolved paths
    table[label_column] = table[label_column].str.strip()
    duplicates = int(table.duplicated().sum())
    if duplicates:
        warnings.warn(f"{path}: dropped {duplicates} duplicate row(s) (paths compared after resolving them).",
                      stacklevel=2)
        keep = ~table.duplicated()
        table, written = table[keep].reset_index(drop=True), written[keep].reset_index(drop=True)
    conflicting = table.duplicated(column, keep=False)
    if conflicting.any():
        rows = written[conflicting].tolist()[:4]
        raise DataError(f"{path}: one image listed more than once with different labels or splits: {rows} are "
                        f"the same file ({table[column][conflicting].iloc[0]}). Keep one row per image.")
    labels = table[label_column].tolist()
    if classes is not None:
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{path}: unknown label(s) {unknown}; expected one of {list(classes)}.")
    _warn_similar_labels(labels, path)
    files = [Path(f) for f in table[column]]
    missing = [(f, "listed in the CSV but not found") for f in files if not f.exists()]
    present = [i for i, f in enumerate(files) if f.exists()]
    files, labels = [files[i] for i in present], [labels[i] for i in present]
    split_values = table[split_column].str.strip().str.lower().tolist() if split_column in table.columns else None
    if split_values is not None:
        split_values = [split_values[i] for i in present]
    if split_values is None:
        group_of = dict(zip(files, table[group_column].str.strip().iloc[present])) if has_groups else {}
        files, labels = _drop_unreadable(files, labels, missing, check_images)
        _warn_skipped(missing)
        groups = np.array([group_of[f] for f in files], dtype=object) if has_groups else \
            group_ids(files, group_pattern, base) if group_pattern else None
        data = _rebalance(_split_seeded(path.stem, files, labels, seed, val_fraction, test_fraction, groups,
                                        f"column {group_column!r}" if has_groups else group_pattern), seed,
                          ("train", "val", "test"))
        _check_trainable(data, path, val_fraction)
        return data
    aliases = {name: split for split, names in SPLIT_FOLDER_NAMES.items() for name in names}
    bad = sorted({s for s in split_values if s not in aliases})
    if bad:
        raise DataError(f"{path}: unknown value(s) {bad} in column {split_column!r}; use train, val or test.")
    by_split: dict[str, tuple[list[Path], list[str]]] = {}
    for split in ("train", "val", "test"):
        rows = [i for i, s in enumerate(split_values) if aliases[s] == split]
        by_split[split] = _drop_unreadable([files[i] for i in rows], [labels[i] for i in rows], missing, check_images)
    _warn_skipped(missing)
    known = sort_classes(by_split["train"][1])
    _check_classes(known, {s: labels for s, (_, labels) in by_split.items()}, path)
    index = {c: i for i, c in enumerate(known)}
    splits = {s: ImageSplit(f, np.array([index[c] for c in labels], dtype=np.int64))
              for s, (f, labels) in by_split.items()}
    note = "CSV splits"
    if not len(splits["val"]):  # a split column with train and test only: validation comes out of train
        _check_trainable(ClassificationData(path.stem, known, splits["train"], splits["train"], splits["test"]),
                         path, val_fraction, before_val=True)
        splits["val"] = _carve(splits, val_fraction, seed)
        note = f"CSV train/test; validation: seeded stratified {val_fraction:.0%} of train (seed {seed})"
    data = ClassificationData(path.stem, known, splits["train"], splits["val"], splits["test"], note)
    if note != "CSV splits":
        data = _rebalance(data, seed)
    _check_trainable(data, path, val_fraction)
    return data


def _csv_columns(path: Path) -> set[str]:
    """The column names in a CSV file's header (empty if it cannot be read)."""
    try:
        return {c.strip() for c in pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns}
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return set()


def load_tag_dataset(source: str | Path = "fashion", *, fields: Sequence[str] | None = None,
                     id_column: str = "id", image_suffix: str = ".jpg") -> TagData:
    """Load images with tag columns: ``"fashion"`` (embedded) or a folder with ``images/`` and one CSV.

    ``fields`` defaults to the catalogue's 7 attribute columns. Among several CSV files the one
    with the id and tag columns is used (Kaggle's catalogue ships ``images.csv`` beside
    ``styles.csv``). Rows whose image is missing, and rows with more fields than the header,
    are dropped with a warning and counted in ``TagData.dropped``; blank tags are kept as
    empty strings for the tagging code to handle.
    """
    name = str(source)
    info = None
    if name == "fashion":
        verify_embedded("fashion/")
        folder, info = embedded_data_dir() / "fashion", REGISTRY["fashion"]
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder. A tag dataset is a folder with images/ and one CSV file.")
    fields = list(fields or FASHION_FIELDS)
    csvs = sorted(folder.glob("*.csv"))
    if len(csvs) > 1:  # e.g. Kaggle's catalogue: styles.csv beside images.csv (file name, link)
        csvs = [c for c in csvs if {id_column, *fields} <= _csv_columns(c)] or csvs
    if len(csvs) != 1:
        raise DataError(f"{folder} must hold exactly one CSV file with an {id_column!r} column and the tag columns "
                        f"{fields}; found {[c.name for c in csvs]}.")
    skipped: list[list[str]] = []
    table = _read_csv(csvs[0], skipped=skipped)
    missing_columns = [c for c in [id_column, *fields] if c not in table.columns]
    if missing_columns:
        raise DataError(f"{csvs[0]} lacks column(s) {missing_columns}; its columns are {list(table.columns)}.")
    dropped = {}
    if skipped:
        dropped["unparsable row"] = len(skipped)
        warnings.warn(f"{csvs[0]}: {len(skipped)} row(s) have more fields than the header (an unquoted comma in a "
                      f"text column?) and were left out (first fields: {[row[0] for row in skipped[:10]]}). Quote "
                      "those values to keep them.", stacklevel=2)
    table["path"] = _image_paths(table, id_column, folder / "images", image_suffix)
    exists = table["path"].map(lambda p: p.exists())
    if not exists.all():
        lost = table.loc[~exists, id_column].tolist()
        dropped["image missing"] = len(lost)
        warnings.warn(f"{csvs[0]}: {len(lost)} row(s) have no image in {folder / 'images'} and were dropped "
                      f"(ids {lost[:10]}{' ...' if len(lost) > 10 else ''}).", stacklevel=2)
    table = table.loc[exists, ["path", id_column, *fields]].reset_index(drop=True)
    for column in fields:
        table[column] = table[column].str.strip()
    return TagData(name if info else folder.name, table, fields, dropped, info)


# --------------------------------------------------------------------------- torch


class ImageDataset:
    """A torch-style dataset over an :class:`ImageSplit`: ``(transform(image), label)`` pairs."""

    def __init__(self, split: ImageSplit, transform: Callable[[Image.Image], object] | None = None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image = self.split.image(index)
        return (self.transform(image) if self.transform else image), int(self.split.labels[index])


# --------------------------------------------------------------------------- full public datasets (manual downloads)


CLOTHING_FULL_UNUSABLE = ("Not sure", "Skip", "Other")
"""Labels of the full clothing dataset that are not garment types; their photos are left out."""


def load_registered(name: str, root: str | Path | None = None, *, seed: int = 0, min_per_class: int = 10,
                    check_images: bool = False) -> ClassificationData:
    """Load a manually downloaded registry dataset from its folder, as the download leaves it.

    ``root`` defaults to ``<cache>/<name>`` (see the entry's ``manual_steps``). EyePACS and
    APTOS: the labelled training set with a seeded stratified 70/10/20 split; full clothing:
    ``images.csv`` without its non-garment labels; full fashion catalogue: ``styles.csv``
    with ``articleType`` as the class (types with fewer than ``min_per_class`` photos
    dropped). Images are not decoded here (``check_images=False``): 35,000 checks take
    minutes, and :func:`tutorial_lib.prepare.prepare` records any that fail.
    """
    info = _registry_entry(name)
    if info.kind != "manual":
        raise DataError(f"{name!r} is not a manual download: use load_dataset({name!r}) or fetch({name!r}).")
    folder = Path(root).expanduser() if root is not None else cache_dir() / name
    if name == "eyepacs":
        data = load_csv_manifest(_need(folder, "trainLabels.csv", info), image_column="image", label_column="level",
                                 image_folder="train", image_suffix=".jpeg", seed=seed, check_images=check_images)
    elif name == "aptos2019":
        data = load_csv_manifest(_need(folder, "train.csv", info), image_column="id_code", label_column="diagnosis",
                                 image_folder="train_images", image_suffix=".png", seed=seed,
                                 check_images=check_images)
    elif name == "clothing_full":
        table = _read_csv(_need(folder, "images.csv", info))
        table = table[~table["label"].str.strip().isin(CLOTHING_FULL_UNUSABLE)]
        images = next((folder / d for d in ("images", "images_original", "images_compressed") if (folder / d).is_dir()),
                      folder / "images")
        data = _table_split(name, _image_paths(table, "image", images, ".jpg"), table["label"].str.strip().tolist(),
                            seed, min_per_class, check_images)
    else:  # fashion_products_full
        inner = folder / "fashion-dataset" if (folder / "fashion-dataset").is_dir() else folder
        styles = _need(inner, "styles.csv", info)
        try:  # some product names hold unquoted commas: those few rows cannot be parsed and are skipped
            table = pd.read_csv(styles, dtype=str, keep_default_na=False, on_bad_lines="skip")
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DataError(f"{styles} could not be read as CSV ({err}).") from err
        table = table[table["articleType"].str.strip() != ""]
        data = _table_split(name, _image_paths(table, "id", inner / "images", ".jpg"),
                            table["articleType"].str.strip().tolist(), seed, min_per_class, check_images)
    data.name, data.info = name, info
    return data


def _need(folder: Path, file: str, info: DatasetInfo) -> Path:
    path = folder / file
    if not path.exists():
        raise DataUnavailableError(f"{path} not found: {info.name!r} is not downloaded there (or not unpacked).\n"
                                   + info.manual_steps.replace("<cache>", str(cache_dir())))
    return path


def _table_split(name: str, files: list[Path], labels: list[str], seed: int, min_per_class: int,
                 check_images: bool) -> ClassificationData:
    """Drop rows without an image and classes with fewer than ``min_per_class`` images, then split."""
    missing = [(f, "listed in the CSV but not found") for f in files if not f.exists()]
    kept = [(f, label) for f, label in zip(files, labels) if f.exists()]
    files, labels = [f for f, _ in kept], [label for _, label in kept]
    files, labels = _drop_unreadable(files, labels, missing, check_images)
    _warn_skipped(missing)
    counts = pd.Series(labels).value_counts() if labels else pd.Series(dtype=int)
    keep_classes = set(counts[counts >= min_per_class].index)
    pairs = [(f, label) for f, label in zip(files, labels) if label in keep_classes]
    return _split_seeded(name, [f for f, _ in pairs], [label for _, label in pairs], seed, 0.1, 0.2)
