"""Datasets: the embedded sets, a registry of larger public ones, and your own folders.

Introduced in ``00_setup``. Three ways in, one result:

- ``load_dataset("retinamnist")`` / ``load_dataset("clothing")``: the real data shipped
  in the project's ``data/`` folder, checked against ``data/MANIFEST.sha256``.
- ``load_dataset("retinamnist_224")``: a larger public version, downloaded once with
  its checksum into a user cache (``TUTORIAL_LIB_CACHE`` overrides where); ``fetch`` returns its files.
- ``load_dataset("/my/photos")``: your own class-subfolder tree or CSV manifest.

Each classification set comes back as a :class:`ClassificationData` with
``train``, ``val`` and ``test`` :class:`ImageSplit` objects; the fashion catalogue
(image + several tag columns) as a :class:`TagData`.

The modules, one reason to change each: ``registry`` (what each dataset is and how its files lie),
``download`` (finding, fetching and verifying the files), ``images`` (the image decoder),
``splits`` (the containers and the seeded split), ``folders`` and ``manifest`` (your own photographs
in folders or a CSV file; tag catalogues), ``loaders`` (:func:`load_dataset`, the one entry point).
"""
from __future__ import annotations

from .download import UnsafeArchiveError, extract_archive, fetch, locate, verify_embedded
from .folders import is_hidden, load_image_folder
from .images import IMAGE_EXTENSIONS, as_rgb, check_image_file, open_image
from .loaders import load_dataset, load_retinamnist
from .manifest import FASHION_FIELDS, IMAGE_COLUMN_NAMES, load_csv_manifest, load_tag_dataset
from .registry import (CLOTHING_FULL_UNUSABLE, PROJECT_ROOT, REGISTRY, ChecksumError, DataError, DatasetInfo,
                       DataUnavailableError, Layout, RemoteFile, cache_dir, embedded_data_dir, list_datasets,
                       registry_entry)
from .splits import (SPLIT_FOLDER_NAMES, ClassificationData, ImageDataset, ImageSplit, TagData, group_ids,
                     sort_classes, stratified_split)

__all__ = [
    "CLOTHING_FULL_UNUSABLE", "FASHION_FIELDS", "IMAGE_COLUMN_NAMES", "IMAGE_EXTENSIONS", "PROJECT_ROOT", "REGISTRY",
    "SPLIT_FOLDER_NAMES", "ChecksumError", "ClassificationData", "DataError", "DataUnavailableError", "DatasetInfo",
    "ImageDataset", "ImageSplit", "Layout", "RemoteFile", "TagData", "UnsafeArchiveError", "as_rgb", "cache_dir",
    "check_image_file", "embedded_data_dir", "extract_archive", "fetch", "group_ids", "is_hidden", "list_datasets",
    "load_csv_manifest", "load_dataset", "load_image_folder", "load_retinamnist", "load_tag_dataset", "locate",
    "open_image", "registry_entry", "sort_classes", "stratified_split", "verify_embedded",
]
