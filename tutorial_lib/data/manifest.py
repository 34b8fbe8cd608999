"""Your own photographs listed in a CSV file, and catalogues of images with tag columns.

:func:`load_csv_manifest` reads a table with an image column and a label column (and optionally
a split or a group column); :func:`load_tag_dataset` a folder of ``images/`` beside one CSV of tag
columns, such as the fashion catalogue.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .download import locate
from .images import drop_unreadable, warn_skipped
from .registry import DataError
from .splits import (SPLIT_FOLDER_NAMES, ClassificationData, ImageSplit, TagData, carve, check_classes,
                     check_trainable, group_ids, rebalance, sort_classes, split_seeded, warn_similar_labels)

IMAGE_COLUMN_NAMES = ("image", "path", "filepath", "file", "filename", "image_path")
FASHION_FIELDS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")


def read_csv(path: Path, *, skipped: list[list[str]] | None = None) -> pd.DataFrame:
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


def image_paths(table: pd.DataFrame, column: str, base: Path, suffix: str) -> list[Path]:
    """The images of ``column``, trimmed, with ``\\`` as ``/``, ``./`` and ``//`` removed, absolute and resolved:
    ``imgs/a/0.jpg``, ``./imgs/a/0.jpg``, ``imgs//a/0.jpg`` and ``imgs\\a\\0.jpg `` are one image."""
    paths = []
    for value in table[column]:
        value = os.path.normpath(value.strip().replace("\\", "/"))
        p = Path(value + suffix if suffix and not value.endswith(suffix) else value)
        paths.append((p if p.is_absolute() else base / p).resolve())
    return paths




# --------------------------------------------------------------------------- a CSV manifest of your photographs


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
    table, column = _manifest_table(path, image_column, label_column, group_column, path.parent / image_folder,
                                    image_suffix)
    labels = table[label_column].tolist()
    if classes is not None:
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{path}: unknown label(s) {unknown}; expected one of {list(classes)}.")
    warn_similar_labels(labels, path)
    files = [Path(f) for f in table[column]]
    missing = [(f, "listed in the CSV but not found") for f in files if not f.exists()]
    present = [i for i, f in enumerate(files) if f.exists()]
    files, labels = [files[i] for i in present], [labels[i] for i in present]
    if split_column in table.columns:
        split_values = table[split_column].str.strip().str.lower().tolist()
        data = _split_by_column(path, files, labels, [split_values[i] for i in present], split_column, missing,
                                seed, val_fraction, check_images)
    else:
        if group_column in table.columns:
            group_of = dict(zip(files, table[group_column].str.strip().iloc[present]))
        files, labels = drop_unreadable(files, labels, missing, check_images)
        warn_skipped(missing)
        if group_column in table.columns:
            groups, grouped_by = np.array([group_of[f] for f in files], dtype=object), f"column {group_column!r}"
        else:
            base = path.parent / image_folder
            groups, grouped_by = (group_ids(files, group_pattern, base) if group_pattern else None), group_pattern
        data = rebalance(split_seeded(path.stem, files, labels, seed, val_fraction, test_fraction, groups, grouped_by),
                         seed, ("train", "val", "test"))
    check_trainable(data, path, val_fraction)
    return data


def _manifest_table(path: Path, image_column: str | None, label_column: str, group_column: str, base: Path,
                    image_suffix: str) -> tuple[pd.DataFrame, str]:
    """The manifest's rows, checked, with resolved image paths and trimmed labels; and the image column's name.

    Blank cells and one image listed with two labels are errors; duplicate rows are dropped with a warning.
    """
    table = read_csv(path)
    column = _resolve_image_column(table, image_column, path)
    if label_column not in table.columns:
        raise DataError(f"{path} has no label column {label_column!r}; pass label_column=... "
                        f"(its columns are {list(table.columns)}).")
    for name in (column, label_column, *([group_column] if group_column in table.columns else [])):
        blank = table.index[table[name].str.strip() == ""].tolist()
        if blank:
            raise DataError(f"{path}: blank {name!r} in data row(s) {[i + 1 for i in blank[:10]]}. "
                            "Fill them in or delete those rows.")
    written = table[column].copy()
    table[column] = [str(f) for f in image_paths(table, column, base, image_suffix)]  # compared as resolved paths
    table[label_column] = table[label_column].str.strip()
    duplicates = int(table.duplicated().sum())
    if duplicates:
        warnings.warn(f"{path}: dropped {duplicates} duplicate row(s) (paths compared after resolving them).",
                      stacklevel=3)
        keep = ~table.duplicated()
        table, written = table[keep].reset_index(drop=True), written[keep].reset_index(drop=True)
    conflicting = table.duplicated(column, keep=False)
    if conflicting.any():
        rows = written[conflicting].tolist()[:4]
        raise DataError(f"{path}: one image listed more than once with different labels or splits: {rows} are "
                        f"the same file ({table[column][conflicting].iloc[0]}). Keep one row per image.")
    return table, column


def _split_by_column(path: Path, files: list[Path], labels: list[str], split_values: list[str], split_column: str,
                     missing: list[tuple[Path, str]], seed: int, val_fraction: float,
                     check_images: bool) -> ClassificationData:
    """The splits a CSV's split column names; validation out of train when the column has train and test only."""
    aliases = {name: split for split, names in SPLIT_FOLDER_NAMES.items() for name in names}
    bad = sorted({s for s in split_values if s not in aliases})
    if bad:
        raise DataError(f"{path}: unknown value(s) {bad} in column {split_column!r}; use train, val or test.")
    by_split: dict[str, tuple[list[Path], list[str]]] = {}
    for split in ("train", "val", "test"):
        rows = [i for i, s in enumerate(split_values) if aliases[s] == split]
        by_split[split] = drop_unreadable([files[i] for i in rows], [labels[i] for i in rows], missing, check_images)
    warn_skipped(missing)
    known = sort_classes(by_split["train"][1])
    check_classes(known, {s: labels for s, (_, labels) in by_split.items()}, path)
    index = {c: i for i, c in enumerate(known)}
    splits = {s: ImageSplit(f, np.array([index[c] for c in labels], dtype=np.int64))
              for s, (f, labels) in by_split.items()}
    if len(splits["val"]):
        return ClassificationData(path.stem, known, splits["train"], splits["val"], splits["test"], "CSV splits")
    check_trainable(ClassificationData(path.stem, known, splits["train"], splits["train"], splits["test"]),
                    path, val_fraction, before_val=True)
    splits["val"] = carve(splits, val_fraction, seed)
    note = f"CSV train/test; validation: seeded stratified {val_fraction:.0%} of train (seed {seed})"
    return rebalance(ClassificationData(path.stem, known, splits["train"], splits["val"], splits["test"], note), seed)


# --------------------------------------------------------------------------- a catalogue of images with tags


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
    info, folder = locate(source, tags=True)
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
    table = read_csv(csvs[0], skipped=skipped)
    missing_columns = [c for c in [id_column, *fields] if c not in table.columns]
    if missing_columns:
        raise DataError(f"{csvs[0]} lacks column(s) {missing_columns}; its columns are {list(table.columns)}.")
    dropped = {}
    if skipped:
        dropped["unparsable row"] = len(skipped)
        warnings.warn(f"{csvs[0]}: {len(skipped)} row(s) have more fields than the header (an unquoted comma in a "
                      f"text column?) and were left out (first fields: {[row[0] for row in skipped[:10]]}). Quote "
                      "those values to keep them.", stacklevel=2)
    table["path"] = image_paths(table, id_column, folder / "images", image_suffix)
    exists = table["path"].map(lambda p: p.exists())
    if not exists.all():
        lost = table.loc[~exists, id_column].tolist()
        dropped["image missing"] = len(lost)
        warnings.warn(f"{csvs[0]}: {len(lost)} row(s) have no image in {folder / 'images'} and were dropped "
                      f"(ids {lost[:10]}{' ...' if len(lost) > 10 else ''}).", stacklevel=2)
    table = table.loc[exists, ["path", id_column, *fields]].reset_index(drop=True)
    for column in fields:
        table[column] = table[column].str.strip()
    return TagData(info.name if info else folder.name, table, fields, dropped, info)

