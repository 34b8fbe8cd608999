"""Full datasets: the Kaggle download with your own credentials, and a one-off preparation step.

Introduced in the README section "From the CPU demo to multi-GPU on the full data".
Decoding a 3-5 Mpx JPEG and finding its fundus disc takes tens of milliseconds; a GPU
trains on an image in well under one. So every image is decoded, cropped (fundus: the
disc, see :func:`tutorial_lib.preprocess.crop_to_disc`; other photos: resized and padded)
and resized **once** into one memory-mapped ``uint8`` array per split::

    python -m tutorial_lib prepare eyepacs --size 512           # -> <cache>/prepared/eyepacs_512/
    python -m tutorial_lib train --data <cache>/prepared/eyepacs_512 ...

The work goes in chunks; after each chunk the array is flushed and the chunk recorded in
``progress.json`` (written atomically), so an interrupted run resumes where it stopped and
a half-written chunk is written again. ``manifest.json`` appears when everything is done.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import atomic_write_text, fingerprint
from ..data import REGISTRY, ClassificationData, DataError, ImageSplit, cache_dir, extract_archive
from ..preprocess import NoDiscFoundWarning, crop_to_disc, resize_pad
from ..progress import tqdm

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- downloads with your credentials


def kaggle_credentials() -> Path | None:
    """Where the Kaggle API token is (``None`` if it is in the environment); raises if there is none."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return None
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    token = config_dir / "kaggle.json"
    if not token.exists():
        raise DataError(
            f"No Kaggle API token: {token} does not exist (nor KAGGLE_USERNAME/KAGGLE_KEY).\n"
            "Fix: on kaggle.com open Settings > API > 'Create New Token', save the kaggle.json it gives you as "
            f"{token} and run `chmod 600 {token}`. For a competition (EyePACS, APTOS) also accept its rules "
            "on the competition's page, or the download is refused (403).")
    return token


def kaggle_download(name: str, folder: str | Path | None = None, *, run: Callable[..., Any] = subprocess.run) -> Path:
    """Download a registry dataset with the Kaggle CLI and your own token into ``folder`` (default its cache folder).

    A competition arrives as one ``<competition>.zip``: it is unpacked into ``folder`` through
    :func:`tutorial_lib.data.extract_archive`, which refuses members that would land outside it.
    What is inside (EyePACS's split 7z archive) is unpacked by hand (the registry entry's
    ``manual_steps``). Nothing is downloaded without your credentials.
    """
    info = REGISTRY.get(name)
    if info is None or not info.kaggle:
        raise DataError(f"{name!r} is not downloaded from Kaggle; Kaggle sets: "
                        f"{', '.join(n for n, i in REGISTRY.items() if i.kaggle)}. "
                        f"See `python -m tutorial_lib datasets` and the registry's manual steps.")
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise DataError("The Kaggle command-line tool is not installed. Fix: `pip install kaggle` "
                        "(it is not a dependency of this project: only the full datasets need it).")
    kaggle_credentials()
    folder = Path(folder).expanduser() if folder is not None else cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    done = run([kaggle, *info.kaggle_command(folder)], check=False)
    if done.returncode != 0:
        raise DataError(f"`kaggle {' '.join(info.kaggle)}` failed (exit {done.returncode}). "
                        "A 403 means the competition's rules are not accepted on kaggle.com for your account.")
    archive = folder / f"{info.kaggle[-1]}.zip"  # competitions: the slug's zip; datasets are --unzip'ed by Kaggle
    if info.kaggle[0] == "competitions" and archive.is_file():
        extract_archive(archive, folder)
    return folder


# --------------------------------------------------------------------------- which data to prepare


def default_crop(data: ClassificationData) -> str:
    """``"disc"`` for fundus photos (DR task), ``"pad"`` for everything else."""
    return "disc" if data.info is not None and data.info.task == "dr" else "pad"


def prepared_dir(name: str, size: int) -> Path:
    """Where :func:`prepare` puts a dataset by default: ``<cache>/prepared/<name>_<size>``."""
    return cache_dir() / "prepared" / f"{name}_{size}"


# --------------------------------------------------------------------------- the preparation step


def process_image(item: Any, size: int, crop: str) -> np.ndarray:
    """One image (a file path or an array), decoded, cropped (``"disc"`` or ``"pad"``) and resized:
    ``(size, size, 3)`` uint8."""
    image = ImageSplit([item] if isinstance(item, (str, Path)) else np.asarray(item)[None], np.zeros(1)).image(0)
    if crop == "disc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDiscFoundWarning)  # a centre crop then; rare on real fundus photos
            out = crop_to_disc(image, size=size)
    else:
        out = resize_pad(image, size)
    return np.asarray(out, dtype=np.uint8)  # (size, size, 3)


def _try_process(args: tuple[Any, int, str]) -> tuple[np.ndarray | None, str]:
    """:func:`process_image` for a worker process: the array, or ``None`` and why it failed."""
    try:
        return process_image(*args), ""
    except (OSError, ValueError, SyntaxError) as err:  # a damaged file
        return None, f"{args[0]}: {type(err).__name__}: {err}"[:300]


def _fingerprint(data: ClassificationData, size: int, crop: str) -> str:
    """What the prepared arrays depend on: settings, classes, labels, and each image's path, size and time."""
    parts = [{"size": size, "crop": crop, "classes": data.classes}]
    for name in SPLITS:
        parts += [data.splits[name].images, data.splits[name].labels]
    return fingerprint(*parts, files="stat")  # reads no photo: the full datasets are tens of GB


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def _open_array(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """The split's image array, created (full size, as a sparse file) under a temporary name, then renamed."""
    if path.exists():
        array = np.load(path, mmap_mode="r+")
        if array.shape == shape and array.dtype == np.uint8:
            return array
        path.unlink()
    tmp = path.with_name(f".{path.name}.tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    array.flush()
    del array
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r+")


def _resume_state(out: Path, fingerprint: str) -> dict[str, Any]:
    """The progress of an earlier run on the same data and settings, or a fresh start (saved at once)."""
    progress_path = out / "progress.json"
    state = json.loads(progress_path.read_text()) if progress_path.exists() else {}
    if state.get("fingerprint") != fingerprint:
        if state:
            warnings.warn(f"{out} holds a preparation of other data or settings: starting afresh.", stacklevel=3)
        (out / "manifest.json").unlink(missing_ok=True)
        state = {"fingerprint": fingerprint, "done": {s: [] for s in SPLITS}, "failed": {s: [] for s in SPLITS},
                 "seconds": 0.0}
        _write_json(progress_path, state)
    return state


def _decode_chunk(split: ImageSplit, indices: range, images: np.memmap, failed: list, *, size: int, crop: str,
                  pool: Any, bar: Any) -> None:
    """Decode the images at ``indices`` (in ``pool``'s processes if there is one) into ``images``; a damaged file
    becomes a black image and is listed in ``failed``."""
    jobs = [(split.images[i], size, crop) for i in indices]
    done = pool.map(_try_process, jobs, chunksize=8) if pool else map(_try_process, jobs)
    for i, (array, problem) in zip(indices, done):
        if array is None:  # a damaged file: black, listed, and left out by load_prepared
            images[i] = 0
            failed.append([i, problem])
        else:
            images[i] = array
        bar.update(1)
    images.flush()


def _write_manifest(out: Path, data: ClassificationData, state: dict[str, Any], *, size: int, crop: str,
                    sizes: dict[str, int]) -> None:
    """The last file of a preparation: what is in the folder, what failed, and how fast it went."""
    manifest_path = out / "manifest.json"
    n_failed = sum(len(v) for v in state["failed"].values())
    if n_failed:
        warnings.warn(f"{n_failed} image(s) could not be decoded and are left out; see {manifest_path}.", stacklevel=3)
    total = sum(sizes.values())
    _write_json(manifest_path, {
        "name": data.name, "classes": list(data.classes), "size": size, "crop": crop, "split_note": data.split_note,
        "splits": sizes, "failed": state["failed"], "fingerprint": state["fingerprint"],
        "seconds": round(state["seconds"], 1), "images_per_second": round(total / max(state["seconds"], 1e-9), 1)})


def prepare(data: ClassificationData, out: str | Path | None = None, *, size: int = 224, crop: str | None = None,
            chunk_size: int = 256, workers: int = 0, progress: bool = True,
            max_chunks: int | None = None) -> Path | None:
    """Decode, crop and resize every image of ``data`` once into ``out`` (default :func:`prepared_dir`).

    ``crop``: ``"disc"`` (fundus), ``"pad"`` (resize the longer side and pad) or ``None``
    (chosen from the dataset's task). Re-running continues an interrupted preparation;
    different data or settings start it afresh. ``max_chunks`` stops after that many new
    chunks and returns ``None`` (a test's interruption). ``workers`` > 1 decodes in that
    many processes (the result is the same). Returns the folder when complete.
    """
    from concurrent.futures import ProcessPoolExecutor

    crop = crop or default_crop(data)
    if crop not in ("disc", "pad"):
        raise ValueError(f"crop must be 'disc' or 'pad', got {crop!r}")
    out = Path(out) if out is not None else prepared_dir(data.name, size)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(data, size, crop)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("fingerprint") == fingerprint:
        return out  # already prepared
    state = _resume_state(out, fingerprint)
    sizes = {s: len(data.splits[s]) for s in SPLITS}
    already = sum(min(chunk_size, sizes[s] - c * chunk_size) for s in SPLITS for c in state["done"][s])
    bar = tqdm(total=sum(sizes.values()), initial=already, desc=f"preparing {data.name} at {size} px", unit="img",
               disable=not progress)
    new_chunks, started = 0, time.perf_counter()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for name in SPLITS:
            split = data.splits[name]
            np.save(out / f"{name}_labels.npy", np.asarray(split.labels, dtype=np.int64))
            images = _open_array(out / f"{name}_images.npy", (sizes[name], size, size, 3))
            for c, start in enumerate(range(0, sizes[name], chunk_size)):
                if c in state["done"][name]:
                    continue
                if max_chunks is not None and new_chunks >= max_chunks:
                    return None
                _decode_chunk(split, range(start, min(start + chunk_size, sizes[name])), images,
                              state["failed"][name], size=size, crop=crop, pool=pool, bar=bar)
                state["done"][name].append(c)
                state["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                _write_json(out / "progress.json", state)
                new_chunks += 1
            del images
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _write_manifest(out, data, state, size=size, crop=crop, sizes=sizes)
    return out


def is_prepared(folder: str | Path) -> bool:
    """True for a folder written completely by :func:`prepare`."""
    return (Path(folder) / "manifest.json").exists()


def load_prepared(folder: str | Path) -> ClassificationData:
    """A prepared dataset as :class:`ClassificationData` whose images are read-only memory-mapped arrays.

    It plugs into everything that takes a split (``ImageDataset``, ``fit``, the strategies);
    only the images a batch needs are read from disk. Images that failed to decode are left out.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        hint = " (the preparation was interrupted: run it again to finish)" if (folder / "progress.json").exists() else ""
        raise DataError(f"{folder} is not a prepared dataset: no manifest.json{hint}. "
                        "Make one with `python -m tutorial_lib prepare NAME`.")
    manifest = json.loads(manifest_path.read_text())
    splits = {}
    for name in SPLITS:
        images = np.load(folder / f"{name}_images.npy", mmap_mode="r")  # (N, size, size, 3) uint8
        labels = np.load(folder / f"{name}_labels.npy")
        split = ImageSplit(images, labels)
        failed = [i for i, _ in manifest["failed"].get(name, [])]
        if failed:
            split = split.subset(np.setdiff1d(np.arange(len(labels)), failed))
        splits[name] = split
    info = REGISTRY.get(manifest["name"])
    return ClassificationData(manifest["name"], manifest["classes"], splits["train"], splits["val"], splits["test"],
                              f"{manifest['split_note']}; prepared at {manifest['size']} px ({manifest['crop']})",
                              info)
