"""Shared fixtures. No test may reach the network: connections other than loopback fail loudly."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tutorial_lib.data as tld

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "", None}
_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(sock, address):
    if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in _LOCAL_HOSTS):
        return _real_connect(sock, address)
    raise RuntimeError(f"test tried to reach the network: {address}")


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host in _LOCAL_HOSTS or (isinstance(host, str) and host.startswith("127.")):
        return _real_getaddrinfo(host, *args, **kwargs)
    raise RuntimeError(f"test tried to resolve a network host: {host}")


def pytest_collection_modifyitems(session, config, items):
    """Tests marked ``after_notebooks`` run last, after nbval has executed the notebooks (``make test`` collects
    ``tests`` before ``notebooks``), so they check the results those runs just recorded."""
    items.sort(key=lambda item: item.get_closest_marker("after_notebooks") is not None)  # stable: order kept


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def clothing():
    return tld.load_dataset("clothing")


@pytest.fixture()
def photo_folder(tmp_path, clothing):
    """A class-subfolder tree of real clothing photos: 3 classes x 10 images, no split folders."""
    root = tmp_path / "my photos"
    for c, name in enumerate(clothing.classes[:3]):
        (root / name).mkdir(parents=True)
        for path in np.asarray(clothing.train.images, dtype=object)[clothing.train.labels == c][:10]:
            shutil.copy(path, root / name / Path(path).name)
    return root


def write_image(path: Path, mode: str = "RGB", size=(40, 30), **save_kwargs) -> Path:
    """Write a small synthetic image in any PIL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        array = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 50).astype(np.uint16)
        Image.fromarray(array).save(path, **save_kwargs)
    else:
        Image.new(mode, size, color=(200, 30, 30, 128)[: len(mode)] if mode not in ("L", "1") else 128).save(
            path, **save_kwargs)
    return path


def write_fundus_photo(path: Path, size=(2000, 1300), grade: int = 0, seed: int = 0, **save_kwargs) -> Path:
    """A synthetic fundus photograph: an orange disc on black, with ``3 * grade`` dark red spots (JPEG)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    r = 0.45 * min(w, h)
    cx, cy = w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers([170, 70, 20], [230, 110, 50])))
    for _ in range(3 * grade):
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.8 * r)
        s = rng.uniform(0.01, 0.03) * r
        x, y = cx + d * np.cos(a), cy + d * np.sin(a)
        draw.ellipse((x - s, y - s, x + s, y + s), fill=(90, 10, 10))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=85, **save_kwargs)
    return path


def write_fundus_folder(root: Path, n_patients: int = 12, size=(2000, 1300), n_grades: int = 3) -> Path:
    """Grade folders of ``Patient<N>_L.jpg`` / ``Patient<N>_R.jpg``; a patient's two eyes may differ by a grade."""
    for n in range(n_patients):
        for k, eye in enumerate("LR"):
            grade = (n + (k if n % 3 == 0 else 0)) % n_grades
            write_fundus_photo(root / str(grade) / f"Patient{n}_{eye}.jpg", size, grade, seed=2 * n + k)
    return root


def write_garment_photo(path: Path, size=(1600, 1200), kind: int = 0, seed: int = 0, orientation: int = 1) -> Path:
    """A synthetic photo of a 'garment': a tall (kind 0), wide (1) or round (2) coloured shape on a light background.

    ``orientation`` is written as the EXIF orientation tag (6: the camera was turned, the pixels are not).
    """
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(200, 250, 3)))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(0, 160, 3))
    cx, cy, s = w / 2, h / 2, 0.4 * min(w, h)
    box = {0: (cx - 0.4 * s, cy - s, cx + 0.4 * s, cy + s), 1: (cx - s, cy - 0.4 * s, cx + s, cy + 0.4 * s),
           2: (cx - 0.8 * s, cy - 0.8 * s, cx + 0.8 * s, cy + 0.8 * s)}[kind % 3]
    (draw.ellipse if kind % 3 == 2 else draw.rectangle)(box, fill=colour)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=85, exif=exif.tobytes())
    return path
