"""Loading a dataset by name or path: the one entry point, and the readers of the registered layouts.

:func:`load_dataset` asks :func:`~tutorial_lib.data.locate` where the data is, then reads it by its
registry row's :class:`~tutorial_lib.data.Layout` (a MedMNIST ``.npz``, class folders, a CSV
manifest or a catalogue) or, for your own folder or CSV file, with
:func:`~tutorial_lib.data.load_image_folder` or :func:`~tutorial_lib.data.load_csv_manifest`.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .download import locate
from .folders import load_image_folder
from .images import drop_unreadable, warn_skipped
from .manifest import image_paths, load_csv_manifest, read_csv
from .registry import REGISTRY, DataError, DataUnavailableError, DatasetInfo
from .splits import ClassificationData, ImageSplit, group_ids, split_seeded


def load_dataset(source: str | Path, *, folder: str | Path | None = None, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, check_images: bool | None = None, group_pattern: str | None = None,
                 min_per_class: int = 10, **csv_options) -> ClassificationData:
    """Load a classification dataset by registry name, folder or CSV manifest.

    - ``"retinamnist"``, ``"clothing"``: embedded, verified against the manifest.
    - ``"retinamnist_224"`` and the other downloadable sets: fetched once with their checksum.
    - ``"eyepacs"``, ``"aptos2019"``, ``"clothing_full"``, ``"fashion_products_full"``: read as the
      manual download leaves them, from ``folder`` (default ``<cache>/<name>``; see the registry's
      ``manual_steps``), with a seeded stratified 70/10/20 split; the catalogues leave out classes
      with fewer than ``min_per_class`` photos.
    - A folder: class subfolders, optionally inside a ``train/`` folder with ``val/`` (``valid/``,
      ``validation/``) and/or ``test/`` beside it, in any case; the split a layout lacks comes
      out of train. Without split folders, a seeded stratified split is made. Every class
      keeps a training and a validation image, or a DataError names the class.
    - A ``.csv`` file: an image column and a label column (see :func:`load_csv_manifest`).
    Unreadable files are skipped with one warning that lists them; ``check_images`` (default: yes for
    your own data, no for the registered downloads, whose 35,000 photos take minutes to check)
    decodes every image first.

    ``group_pattern`` (a regular expression, e.g. ``r"Patient(\\d+)"``; see :func:`group_ids`) or a
    ``group`` column in a CSV manifest names the group of each image (the patient whose two eyes
    must not be split): the seeded split then keeps every group on one side.
    """
    info, path = locate(source, folder)
    if info is not None:
        return _load_registered(info, path, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                check_images=bool(check_images), group_pattern=group_pattern,
                                min_per_class=min_per_class)
    check_images = True if check_images is None else check_images
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


def _load_registered(info: DatasetInfo, path: Path, *, seed: int, val_fraction: float, test_fraction: float,
                     check_images: bool, group_pattern: str | None, min_per_class: int) -> ClassificationData:
    """A registered dataset at ``path`` (from :func:`locate`), read by its layout."""
    layout = info.layout
    if layout.format == "npz":
        data = load_retinamnist(path)
    elif layout.format == "folders":  # embedded and verified: no need to decode every image
        data = load_image_folder(path, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                 check_images=check_images, group_pattern=group_pattern)
    else:  # a CSV table as the download leaves it
        inner = path / layout.inside if layout.inside and (path / layout.inside).is_dir() else path
        table = inner / layout.csv
        if not table.exists():
            raise DataUnavailableError(f"{table} not found: {info.name!r} is not downloaded there (or not "
                                       f"unpacked).\n" + info.instructions())
        images = next((d for d in layout.images if (inner / d).is_dir()), layout.images[0])
        if layout.format == "manifest":
            data = load_csv_manifest(table, image_column=layout.image_column, label_column=layout.label_column,
                                     image_folder=images, image_suffix=layout.suffix, seed=seed,
                                     val_fraction=val_fraction, test_fraction=test_fraction,
                                     check_images=check_images, group_pattern=group_pattern)
        else:
            data = _load_catalogue(info, table, inner / images, seed=seed, val_fraction=val_fraction,
                                   test_fraction=test_fraction, check_images=check_images,
                                   group_pattern=group_pattern, min_per_class=min_per_class)
    data.name, data.info = info.name, info
    return data


def _load_catalogue(info: DatasetInfo, csv: Path, images: Path, *, seed: int, val_fraction: float,
                    test_fraction: float, check_images: bool, group_pattern: str | None,
                    min_per_class: int) -> ClassificationData:
    """A catalogue's table: rows without a photo, rows with a label in ``drop_labels`` and classes with fewer
    than ``min_per_class`` photos are left out, then a seeded stratified split is made."""
    layout = info.layout
    table = read_csv(csv, skipped=[])  # some product names hold unquoted commas: those few rows are left out
    table = table[~table[layout.label_column].str.strip().isin(layout.drop_labels)]
    files = image_paths(table, layout.image_column, images, layout.suffix)
    missing = [(f, "listed in the CSV but not found") for f in files if not f.exists()]
    kept = [(f, label) for f, label in zip(files, table[layout.label_column].str.strip()) if f.exists()]
    files, labels = drop_unreadable([f for f, _ in kept], [label for _, label in kept], missing, check_images)
    warn_skipped(missing)
    counts = pd.Series(labels).value_counts() if labels else pd.Series(dtype=int)
    keep_classes = set(counts[counts >= min_per_class].index)
    pairs = [(f, label) for f, label in zip(files, labels) if label in keep_classes]
    files, labels = [f for f, _ in pairs], [label for _, label in pairs]
    groups = group_ids(files, group_pattern, images) if group_pattern else None
    return split_seeded(info.name, files, labels, seed, val_fraction, test_fraction, groups, group_pattern)


def load_retinamnist(path: Path | None = None) -> ClassificationData:
    """The embedded RetinaMNIST (``path=None``, verified) or another MedMNIST-style ``.npz`` with the same keys."""
    if path is None:
        path = locate("retinamnist")[1]
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


