"""What a dataset is in memory, and the one seeded split that every loader and caller uses.

:class:`ImageSplit` (images and integer labels, optionally the group of each image),
:class:`ClassificationData` (train, val and test splits), :class:`TagData` (images with tag
columns) and :class:`ImageDataset` (a torch-style view of a split). :func:`stratified_split`
is the package's one train/held-out split: stratified where the labels allow it, grouped where a
group (a patient) must stay on one side; the loaders build their train/val/test split from it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace as _replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .images import as_rgb, open_image
from .registry import DataError, DatasetInfo

SPLIT_FOLDER_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
"""The spellings of each split, in folder names and in a CSV's split column (matched in lower case)."""

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
        return open_image(item) if isinstance(item, (str, Path)) else as_rgb(np.asarray(item, dtype=np.uint8))

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


# --------------------------------------------------------------------------- the seeded split


def sort_classes(names: set[str] | Sequence[str]) -> list[str]:
    """Class names in a stable order: numerically when all are integers (``"2"`` before ``"10"``), else by text.

    The order is the class index, and ordinal code (DR grades) relies on it.
    """
    names = sorted(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names



def stratified_split(indices: np.ndarray, y: np.ndarray | None, held: float | int, seed: int,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into the kept and the held-out part, both sorted: the package's one seeded split.

    ``held``: the fraction (a float) or the number (an int) of items held out. Without ``groups``:
    scikit-learn's ``train_test_split`` with ``random_state=seed``, stratified by ``y`` where every
    class can be on both sides (else, e.g. on 9 images or with ``y=None``, plainly random). With
    ``groups`` (e.g. the patient of each image) every group lands on one side, stratified as far as
    whole groups allow (``StratifiedGroupKFold``; ``GroupShuffleSplit`` with fewer groups than folds).
    """
    from sklearn.model_selection import train_test_split

    if groups is not None:
        fraction = held / len(indices) if isinstance(held, (int, np.integer)) else held
        return _grouped_split(indices, np.zeros(len(indices)) if y is None else y, fraction, seed, groups)
    n_held = int(held) if isinstance(held, (int, np.integer)) else math.ceil(held * len(indices))
    can_stratify = False
    if y is not None:  # stratify only where every class can be on both sides (sklearn raises otherwise)
        counts = np.unique(y, return_counts=True)[1]
        can_stratify = counts.min() >= 2 and len(counts) <= n_held <= len(y) - len(counts)
    keep, out = train_test_split(indices, test_size=held, random_state=seed, stratify=y if can_stratify else None)
    return np.sort(keep), np.sort(out)


def _grouped_split(indices: np.ndarray, y: np.ndarray, fraction: float, seed: int,
                   groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every group on one side; stratified as far as whole groups allow."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

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


def split_seeded(name: str, files: list, labels: Sequence[str], seed: int, val_fraction: float,
                 test_fraction: float, groups: np.ndarray | None = None,
                 grouped_by: str | None = None) -> ClassificationData:
    """Files and their class names as a train/val/test split: first the test part held out, then validation."""
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
    rest, test = stratified_split(all_idx, y, test_fraction, seed, groups)
    train, val = stratified_split(rest, y[rest], val_fraction / (1 - test_fraction), seed,
                                  None if groups is None else groups[rest])
    splits = {s: ImageSplit([files[i] for i in idx], y[idx], None if groups is None else groups[idx]) for s, idx in
              [("train", train), ("val", val), ("test", test)]}
    note = f"seeded stratified split {1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%} (seed {seed})"
    if groups is not None:
        counts = ", ".join(f"{s} {len(set(split.groups))}" for s, split in splits.items())
        note += f", grouped by {grouped_by or 'the group column'}: groups per split {counts}"
    return ClassificationData(name, classes, splits["train"], splits["val"], splits["test"], note)


def carve(splits: dict[str, "ImageSplit"], fraction: float, seed: int) -> "ImageSplit":
    """Take a seeded stratified ``fraction`` of the training split out (as the split the folders lack)."""
    train = splits["train"]
    keep, held = stratified_split(np.arange(len(train)), train.labels, fraction, seed, train.groups)
    splits["train"] = train.subset(keep)
    return train.subset(held)


def rebalance(data: ClassificationData, seed: int, movable: Sequence[str] = ("train", "val")) -> ClassificationData:
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


# --------------------------------------------------------------------------- checks on a split


def check_trainable(data: ClassificationData, source: Path, val_fraction: float, before_val: bool = False) -> None:
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


def warn_similar_labels(labels: Sequence[str], source: Path) -> None:
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


def check_classes(train_classes: list[str], labels_by_split: dict[str, list[str]], source: Path) -> None:
    """At least two training classes, and no class outside train that train lacks."""
    if len(train_classes) < 2:
        raise DataError(f"{source}: the training split has {len(train_classes)} class(es) {train_classes}; "
                        "a classifier needs at least 2.")
    others = {c for split, labels in labels_by_split.items() if split != "train" for c in labels}
    unknown = sorted(others - set(train_classes))
    if unknown:
        raise DataError(f"{source}: class(es) {unknown} appear in validation/test but not in train. "
                        "Add training images for them or remove them from the other splits.")


