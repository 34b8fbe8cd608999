"""The dataset registry: what each dataset is, where it comes from and how its files lie; the errors.

A registry row (:class:`DatasetInfo`) carries everything the rest of the package needs to know about
a dataset: its licence, its downloadable files with their checksums, the Kaggle command that fetches
it, and its :class:`Layout` (which files hold the labels and the photos), so that
:func:`tutorial_lib.data.load_dataset` reads every registered dataset without code of its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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


# --------------------------------------------------------------------------- registry rows


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it lives and the hash it must have (``"md5:..."``/``"sha256:..."``)."""

    name: str
    url: str
    known_hash: str


@dataclass(frozen=True)
class Layout:
    """How a dataset's files lie, so that one loader reads every registered dataset.

    ``format``: ``"npz"`` (a MedMNIST ``.npz`` of image and label arrays), ``"folders"`` (class
    subfolders), ``"tags"`` (an ``images/`` folder beside one CSV of tag columns), ``"manifest"``
    (a CSV of image and label, read and split by :func:`~tutorial_lib.data.load_csv_manifest`) or
    ``"catalogue"`` (a CSV of image and label whose classes with too few photos are left out).
    For the two CSV formats: ``csv`` is the table, in the subfolder ``inside`` when the download
    has it; ``images`` the photo folders beside the table (the first that exists); ``suffix`` is
    appended to image ids without one; rows labelled with one of ``drop_labels`` are left out.
    """

    format: str
    csv: str = ""
    image_column: str = ""
    label_column: str = ""
    images: tuple[str, ...] = ()
    suffix: str = ""
    inside: str = ""
    drop_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """An entry in the dataset registry.

    ``kaggle``: the Kaggle CLI arguments that download it (``-p <folder>`` is added). ``steps``: how
    to get it by hand, ``<kaggle>`` standing for that command and ``<cache>`` for the cache folder.
    """

    name: str
    kind: str  # "embedded", "download" or "manual"
    task: str  # "dr", "clothing", "tagging" or "other"
    description: str
    licence: str
    citation: str
    files: tuple[RemoteFile, ...] = ()
    steps: str = ""
    layout: Layout | None = None
    kaggle: tuple[str, ...] = ()

    def kaggle_command(self, folder: str | Path) -> list[str]:
        """The Kaggle CLI arguments that download this dataset into ``folder``."""
        return [*self.kaggle, "-p", str(folder)]

    @property
    def manual_steps(self) -> str:
        """How to get it by hand, with the Kaggle command written out (``<cache>``: the cache folder)."""
        return self.steps.replace("<kaggle>", " ".join(["kaggle", *self.kaggle_command(f"<cache>/{self.name}")]))

    def instructions(self) -> str:
        """:attr:`manual_steps` with this machine's cache folder written in."""
        return self.manual_steps.replace("<cache>", str(cache_dir()))


_MEDMNIST = "https://zenodo.org/records/10519652/files/"
_MEDMNIST_CITE = ("Yang et al., 'MedMNIST v2', Scientific Data 2023; DeepDRiD, Liu et al. 2022. "
                  "https://medmnist.com")
_FASHION_MNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _kaggle_dr(name: str, slug: str, description: str, size: str, unpack: str, layout: Layout) -> DatasetInfo:
    """A Kaggle competition's fundus photos graded 0-4: downloaded with your token, unpacked by hand."""
    photos = f"{layout.images[0]}/<{layout.image_column}>{layout.suffix}"
    return DatasetInfo(
        name, "manual", "dr", description, "Kaggle competition rules (registration required)",
        f"https://www.kaggle.com/c/{slug}",
        steps=("Accept the competition rules on its Kaggle page, put your API token in ~/.kaggle/kaggle.json "
               f"(chmod 600), pip install kaggle, then ({size}):\n<kaggle>\n{unpack}\n"
               f"({layout.csv} with {layout.image_column},{layout.label_column}; photos {photos}). Then:\n"
               f"python -m tutorial_lib prepare {name} --size 512   # or load_dataset({name!r})"),
        layout=layout, kaggle=("competitions", "download", "-c", slug))


CLOTHING_FULL_UNUSABLE = ("Not sure", "Skip", "Other")
"""Labels of the full clothing dataset that are not garment types; their photos are left out."""

REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "retinamnist", "embedded", "dr",
            "RetinaMNIST, 1,600 colour fundus photos at 28 px, DR grade 0-4 (official splits 1080/120/400).",
            "CC BY 4.0", _MEDMNIST_CITE, layout=Layout("npz")),
        DatasetInfo(
            "clothing", "embedded", "clothing",
            "Clothing dataset (small), 10 garment types; the official train, validation and test splits "
            "whole (3068/341/372).",
            "CC0 1.0", "Alexey Grigorev, 'Clothing dataset (small)', https://github.com/alexeygrigorev/clothing-dataset-small",
            layout=Layout("folders")),
        DatasetInfo(
            "fashion", "embedded", "tagging",
            "Fashion Product Images (Small) subset: 224 px catalogue photos with 7 attribute tags "
            "(at most 95 images per article type, seed 0).",
            "MIT (as declared by the source)",
            "Param Aggarwal, 'Fashion Product Images (Small)', Kaggle "
            "(https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-small)",
            layout=Layout("tags")),
        *[
            DatasetInfo(
                f"retinamnist_{size}", "download", "dr",
                f"RetinaMNIST+ at {size} px (MedMNIST+), same 1,600 images and splits as the embedded 28 px set.",
                "CC BY 4.0", _MEDMNIST_CITE,
                files=(RemoteFile(f"retinamnist_{size}.npz", f"{_MEDMNIST}retinamnist_{size}.npz?download=1",
                                  f"md5:{md5}"),), layout=Layout("npz"))
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
            steps=("git clone --depth 1 https://github.com/alexeygrigorev/clothing-dataset <cache>/clothing_full\n"
                   "(images.csv with image,label columns; photos in images/). Then:\n"
                   "python -m tutorial_lib prepare clothing_full --size 224   "
                   "# or load_dataset('clothing_full') in Python"),
            layout=Layout("catalogue", "images.csv", "image", "label",
                          ("images", "images_original", "images_compressed"), ".jpg", drop_labels=CLOTHING_FULL_UNUSABLE)),
        _kaggle_dr("eyepacs", "diabetic-retinopathy-detection",
                   "Kaggle Diabetic Retinopathy Detection (EyePACS), 35,126 training fundus photos, grades 0-4.",
                   "tens of GB", "cd <cache>/eyepacs && unzip -q diabetic-retinopathy-detection.zip && 7z x "
                   "train.zip.001 && unzip -q trainLabels.csv.zip   (train.zip.001-005 are one split archive; 7z is "
                   "p7zip)", Layout("manifest", "trainLabels.csv", "image", "level", ("train",), ".jpeg")),
        _kaggle_dr("aptos2019", "aptos2019-blindness-detection",
                   "APTOS 2019 Blindness Detection, 3,662 labelled fundus photos, grades 0-4.",
                   "several GB", "cd <cache>/aptos2019 && unzip -q aptos2019-blindness-detection.zip",
                   Layout("manifest", "train.csv", "id_code", "diagnosis", ("train_images",), ".png")),
        DatasetInfo(
            "fashion_products_full", "manual", "tagging",
            "Fashion Product Images, the whole catalogue: 44,000 images with the same 7 tag columns.",
            "MIT (as declared by the source)",
            "https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-dataset",
            steps=("Put your Kaggle API token in ~/.kaggle/kaggle.json (chmod 600), pip install kaggle, then "
                   "(tens of GB; the -small dataset has the same layout with smaller photos):\n<kaggle>\n"
                   "(fashion-dataset/styles.csv with id and tag columns; photos fashion-dataset/images/<id>.jpg). "
                   "Then:\npython -m tutorial_lib prepare fashion_products_full --size 224   "
                   "# classes: articleType; or load_dataset('fashion_products_full')"),
            layout=Layout("catalogue", "styles.csv", "id", "articleType", ("images",), ".jpg", inside="fashion-dataset",
                          drop_labels=("",)),
            kaggle=("datasets", "download", "-d", "paramaggarwal/fashion-product-images-dataset", "--unzip")),
    ]
}


def list_datasets() -> pd.DataFrame:
    """The registry as a table: name, kind, task, description, licence."""
    rows = [{"name": i.name, "kind": i.kind, "task": i.task, "description": i.description, "licence": i.licence}
            for i in REGISTRY.values()]
    return pd.DataFrame(rows).set_index("name")


def registry_entry(name: str) -> DatasetInfo:
    """The registry row of ``name``; an unknown name is a :class:`DataError` listing the registered ones."""
    if name not in REGISTRY:
        raise DataError(f"Unknown dataset {name!r}. Registered: {', '.join(REGISTRY)}; "
                        "or pass the path of your own folder or CSV manifest.")
    return REGISTRY[name]
