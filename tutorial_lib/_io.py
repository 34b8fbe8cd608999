"""Files the library writes and the digests it keys them by: one helper of each kind.

- :func:`atomic_path` / :func:`atomic_write_text` / :func:`atomic_save`: every write (checkpoints,
  caches, results, prepared arrays, saved models) goes to a temporary file beside the target,
  which is then renamed over it, so a process killed mid-write leaves the old file (or none),
  never half a file; the file gets the user's usual permissions.
- :func:`cached_array`: a ``.npy`` cache entry, recomputed if damaged, never trusted half-written.
- :func:`file_sha256`: a file's SHA-256, computed once per process for an unchanged file.
- :func:`fingerprint`: a short hash of the data's *content* (pixels, file bytes, labels) and any
  settings, which caches and checkpoints are keyed by.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


def default_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    umask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    ``tempfile.mkstemp`` creates the temporary file readable by its owner only (0600); it gets
    the usual permissions (:func:`default_mode`) before the rename. On any error, Ctrl-C
    included, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill mid-write leaves the old file intact."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


def cache_file(cache_dir: str | Path, key: Any) -> Path:
    """The ``.npy`` file under ``cache_dir`` for a JSON-able ``key`` (a hash of it names the file)."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{name}.npy"


def cached_array(path: str | Path | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array stored at ``path``, else ``compute()``, stored there for next time (``None``: no cache)."""
    if path is None:
        return compute()
    path = Path(path)
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
    array = compute()
    with atomic_path(path, suffix=".npy") as tmp:  # a name ending in .npy: np.save adds nothing to it
        np.save(tmp, array, allow_pickle=False)
    return array


@lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file; an unchanged file (same size and mtime) is read once per process."""
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _update(digest: Any, part: Any, files: str) -> None:
    """Feed one part to ``digest``: arrays and tensors by their bytes, images by their pixels, files by
    their bytes (``files="content"``) or by their path, size and modification time (``"stat"``)."""
    from PIL import Image

    if hasattr(part, "detach") and hasattr(part, "numpy"):  # a torch tensor
        part = part.detach().cpu().numpy()
    if isinstance(part, np.ndarray) and part.dtype.kind in "OUS":  # an array of paths or names
        part = part.tolist()
    if isinstance(part, np.ndarray) and part.dtype != object:
        digest.update(repr((part.shape, str(part.dtype))).encode())
        digest.update(np.ascontiguousarray(part).data)
    elif isinstance(part, (str, Path)) and os.path.isfile(part):
        if files == "content":
            digest.update(file_sha256(part).encode())
        else:
            stat = os.stat(part)
            digest.update(f"{os.path.realpath(part)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    elif isinstance(part, Image.Image):
        digest.update(repr((part.mode, part.size)).encode())
        digest.update(part.tobytes())
    elif isinstance(part, (list, tuple)) and part and not isinstance(part[0], (int, float, bool)):
        digest.update(f"[{len(part)}]".encode())
        for item in part:
            _update(digest, item, files)
    else:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())


def fingerprint(*parts: Any, length: int = 16, files: str = "content") -> str:
    """A short hex hash of the content of ``parts``: pixels, files, labels, settings.

    ``files="content"``: image files count by their bytes, so a moved copy of a dataset keeps its
    fingerprint (caches of what was computed from the images). ``"stat"``: by path, size and
    modification time, which reads no file: for the full datasets' tens of GB (preparation, runs).
    Either way a photo replaced under its old name changes the fingerprint.
    """
    if files not in ("content", "stat"):
        raise ValueError(f"files={files!r}: use 'content' or 'stat'.")
    digest = hashlib.sha256()
    for part in parts:
        _update(digest, part, files)
    return digest.hexdigest()[:length]
