"""Your own photographs in folders: a class-subfolder tree, optionally inside train/val/test folders.

:func:`load_image_folder` walks the tree (hidden files ignored; symbolic links that dangle, loop or
point back into the tree skipped and named), skips files that are not usable images with one
warning, and makes the split a layout lacks with :func:`~tutorial_lib.data.stratified_split`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS, drop_unreadable, warn_skipped
from .registry import DataError
from .splits import (SPLIT_FOLDER_NAMES, ClassificationData, ImageSplit, carve, check_classes, check_trainable,
                     group_ids, rebalance, sort_classes, split_seeded, warn_similar_labels)

def load_image_folder(root: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      check_images: bool = True, group_pattern: str | None = None) -> ClassificationData:
    """Load a class-subfolder tree (see :func:`load_dataset`; ``group_pattern`` as in :func:`group_ids`)."""
    root = Path(root)
    split_dirs = _find_split_folders(root)
    skipped: list[tuple[Path, str]] = []
    if not split_dirs:
        files, labels, skipped = _scan_class_folders(root)
        files, labels = drop_unreadable(files, labels, skipped, check_images)
        warn_skipped(skipped)
        warn_similar_labels(labels, root)
        groups = group_ids(files, group_pattern, root) if group_pattern else None
        data = rebalance(split_seeded(root.name, files, labels, seed, val_fraction, test_fraction, groups,
                                        group_pattern), seed, ("train", "val", "test"))
        check_trainable(data, root, val_fraction)
        return data
    scanned: dict[str, tuple[list[Path], list[str]]] = {}
    for split, folder in split_dirs.items():
        files, labels, skip = _scan_class_folders(folder)
        skipped += skip
        scanned[split] = drop_unreadable(files, labels, skipped, check_images)
    warn_skipped(skipped)
    warn_similar_labels([c for _, labels in scanned.values() for c in labels], root)
    classes = sort_classes(scanned["train"][1])
    check_classes(classes, {s: labels for s, (_, labels) in scanned.items()}, root)
    index = {c: i for i, c in enumerate(classes)}
    splits = {s: ImageSplit(files, np.array([index[c] for c in labels], dtype=np.int64),
                            group_ids(files, group_pattern, root) if group_pattern else None)
              for s, (files, labels) in scanned.items()}
    names = "/".join(p.name for p in split_dirs.values())
    note = "folder splits"
    if "test" not in splits:  # e.g. Keras' train/ + validation/: the test split comes out of train
        splits["test"] = carve(splits, test_fraction, seed)
        note = f"folder {names}; test: seeded stratified {test_fraction:.0%} of train (seed {seed})"
    if "val" not in splits:
        check_trainable(ClassificationData(root.name, classes, splits["train"], splits["train"], splits["test"]),
                         root, val_fraction, before_val=True)
        splits["val"] = carve(splits, val_fraction, seed)
        note = f"folder {names}; validation: seeded stratified {val_fraction:.0%} of train (seed {seed})"
    if group_pattern:
        _warn_groups_across_folders(splits, group_pattern, root)
    data = ClassificationData(root.name, classes, splits["train"], splits["val"], splits["test"], note)
    if "val" not in split_dirs:
        data = rebalance(data, seed)
    check_trainable(data, root, val_fraction)
    return data



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


def _warn_groups_across_folders(splits: dict[str, "ImageSplit"], group_pattern: str, root: Path) -> None:
    """Warn when the user's split folders put one group (a patient) on two sides: the folders' split leaks it."""
    sides = [set(s.groups) for s in splits.values()]
    shared = set().union(*(a & b for i, a in enumerate(sides) for b in sides[i + 1:]))
    if shared:
        warnings.warn(f"{root}: {len(shared)} group(s) of GROUP_PATTERN {group_pattern!r} have images in two "
                      f"split folders (e.g. {sorted(shared)[0]!r}): the folders' split leaks them. Move them, or "
                      "drop the split folders to split by group.", stacklevel=3)


