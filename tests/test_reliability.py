"""Reliability: bad input, interrupted work, unsafe files and resource faults (issue 6).

Every case here is a row of ``docs/reliability.md``; :func:`test_reliability_table_names_real_tests`
keeps that table and these tests in step. Interruptions are real: a subprocess is killed with
SIGKILL mid-epoch, mid-write and mid-download, and the re-run must need no manual clean-up.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image
from torch.utils.data import TensorDataset

import tutorial_lib.profiles as tlprof
import tutorial_lib.checkpoint as tck
from tutorial_lib import _io
import tutorial_lib.data as tld
import tutorial_lib.env as tle
import tutorial_lib.models as tlm
import tutorial_lib.tools.runner as tlrun
import tutorial_lib.train as tlt
from conftest import write_image

ROOT = Path(__file__).resolve().parents[1]
# children import this checkout's tutorial_lib (not another copy an editable install may point at)
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _expect_data_error(match: str, call, *args, **kwargs) -> str:
    """Run ``call``; it must raise DataError (not a library's own exception) matching ``match``."""
    with pytest.raises(tld.DataError, match=match) as err:
        call(*args, **kwargs)
    return str(err.value)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and header declaring ``width`` x ``height``: a few bytes claiming gigapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _folder(root: Path, classes=("coat", "shirt"), per_class: int = 4) -> Path:
    """A class-subfolder tree of small synthetic photos."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.jpg", size=(24, 18))
    return root


# =========================================================================== bad input: images


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "missing"])
def test_unreadable_image_names_the_file(tmp_path, kind):
    good = write_image(tmp_path / "good.png", size=(64, 64))
    path = tmp_path / f"photo {kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        path.write_text("this is not a png")
    # opened directly (check_images=False skips the up-front check): a DataError naming the file and a fix
    split = tld.ImageSplit([path], np.array([0]))
    message = _expect_data_error(re.escape(path.name), split.image, 0)
    assert "Fix" in message or "restore" in message


def test_decompression_bomb_is_skipped_with_the_fix(tmp_path):
    root = _folder(tmp_path / "photos", per_class=3)
    _png_header_only(root / "coat" / "bomb.png", 100_000, 100_000)  # 10 gigapixels declared in 70 bytes
    with pytest.warns(UserWarning, match=r"(?s)bomb\.png: too large to decode safely.*MAX_IMAGE_PIXELS"):
        data = tld.load_dataset(root)
    assert sum(len(s) for s in data.splits.values()) == 6


def test_decompression_bomb_opened_directly_is_a_clear_error(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", size=(300, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 90,000 px is then more than twice the limit
    _expect_data_error(r"big\.png is too large to decode safely.*MAX_IMAGE_PIXELS = None", tld.open_image, path)


def test_odd_photos_go_through_the_loader_end_to_end(tmp_path):
    """Every odd mode a phone, scanner or editor writes ends as the same 3-channel tensor."""
    from torchvision import transforms

    root = tmp_path / "odd"
    write_image(root / "a" / "alpha.png", "RGBA")
    write_image(root / "a" / "grey_alpha.png", "LA")
    write_image(root / "a" / "deep.png", "I;16")
    write_image(root / "b" / "grey.jpg", "L")
    write_image(root / "b" / "cmyk.jpg", "CMYK")
    Image.new("RGB", (40, 30), (9, 9, 200)).convert("P").save(root / "b" / "palette.gif")
    write_image(root / "c" / "bilevel.png", "1")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    Image.new("RGB", (40, 30), (0, 90, 0)).save(root / "c" / "rotated.jpg", exif=exif.tobytes())
    write_image(root / "c" / "plain.webp")
    from tutorial_lib.data.folders import _scan_class_folders

    files, labels, skipped = _scan_class_folders(root)
    assert len(files) == 9 and not skipped
    dataset = tld.ImageDataset(tld.ImageSplit(files, np.zeros(len(files), dtype=np.int64)),
                               transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()]))
    shapes = {tuple(dataset[i][0].shape) for i in range(len(dataset))}
    assert shapes == {(3, 16, 16)}
    assert tld.open_image(root / "c" / "rotated.jpg").size == (30, 40)


def test_unicode_and_spaces_in_file_names(tmp_path):
    root = tmp_path / "mes photos été"
    for cls in ("robe d'été", "日本 シャツ"):
        for i in range(3):
            write_image(root / cls / f"ph oto ü {i}.JPG", size=(20, 20))
    data = tld.load_dataset(root, val_fraction=0.34, test_fraction=0.34)
    assert data.classes == ["robe d'été", "日本 シャツ"]
    assert sum(len(s) for s in data.splits.values()) == 6
    rows = [{"image": str(p.relative_to(root)), "label": p.parent.name} for p in sorted(root.rglob("*.JPG"))]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    from_csv = tld.load_dataset(root / "manifest.csv", val_fraction=0.34, test_fraction=0.34)
    assert from_csv.classes == data.classes and from_csv.train.image(0).mode == "RGB"


def test_macos_and_windows_litter_is_ignored(tmp_path):
    root = _folder(tmp_path / "photos", per_class=3)
    (root / "coat" / "._coat_0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "__MACOSX" / "coat").mkdir(parents=True)
    (root / "__MACOSX" / "coat" / "._coat_1.jpg").write_bytes(b"\0")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "shirt" / "Thumbs.db").write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning) as caught:
        data = tld.load_dataset(root)
    text = " ".join(str(w.message) for w in caught)
    assert "Thumbs.db" in text and "._coat_0" not in text and "__MACOSX" not in text
    assert data.classes == ["coat", "shirt"] and sum(len(s) for s in data.splits.values()) == 6


# =========================================================================== bad input: datasets and CSV files


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    _expect_data_error(r"nothing has no class subfolders.*<class name>", tld.load_dataset, tmp_path / "nothing")


def test_folder_of_only_unreadable_images_is_a_clear_error(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "x.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="Skipped 2 file"):
        _expect_data_error("no usable images were found", tld.load_dataset, tmp_path / "bad")


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"image,label\n", "header but no rows"),
    ("image,label\ncaf\xe9.jpg,a\n".encode("latin-1"), "could not be read as CSV.*UTF-8"),
])
def test_empty_or_unreadable_csv_is_a_clear_error(tmp_path, content, match):
    (tmp_path / "m.csv").write_bytes(content)
    _expect_data_error(f"m.csv.*{match}", tld.load_dataset, tmp_path / "m.csv")


def test_csv_from_a_spreadsheet_with_byte_order_mark_loads(tmp_path):
    root = _folder(tmp_path / "photos", per_class=3)
    rows = [{"image": str(p.relative_to(root)), "label": p.parent.name} for p in sorted(root.rglob("*.jpg"))]
    (root / "m.csv").write_text(pd.DataFrame(rows).to_csv(index=False), encoding="utf-8-sig")
    assert tld.load_dataset(root / "m.csv", val_fraction=0.34, test_fraction=0.34).classes == ["coat", "shirt"]


def test_csv_blank_image_cell_is_named(tmp_path):
    root = _folder(tmp_path / "photos", per_class=3)
    rows = [{"image": str(p.relative_to(root)), "label": p.parent.name} for p in sorted(root.rglob("*.jpg"))]
    rows[2]["image"] = "  "
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    _expect_data_error(r"blank 'image' in data row\(s\) \[3\]", tld.load_dataset, root / "m.csv")


def test_csv_without_an_image_column_lists_its_columns(tmp_path):
    pd.DataFrame({"picture": ["a.jpg"], "label": ["x"]}).to_csv(tmp_path / "m.csv", index=False)
    _expect_data_error(r"no image column.*image_column=.*'picture'", tld.load_dataset, tmp_path / "m.csv")


def test_csv_single_class_and_class_only_in_test_are_errors(tmp_path):
    root = _folder(tmp_path / "photos", classes=("coat", "shirt", "sock"), per_class=3)
    rows = [{"image": str(p.relative_to(root)), "label": p.parent.name,
             "split": "test" if p.parent.name == "sock" else "train"} for p in sorted(root.rglob("*.jpg"))]
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    _expect_data_error(r"\['sock'\] appear in validation/test but not in train", tld.load_dataset, root / "m.csv")
    single = [dict(r, label="coat") for r in rows if r["split"] == "train"]
    pd.DataFrame(single).drop(columns="split").to_csv(root / "one.csv", index=False)
    _expect_data_error("only the class \\['coat'\\].*at least 2", tld.load_dataset, root / "one.csv")


def test_numeric_class_names_keep_numeric_order(tmp_path):
    root = tmp_path / "grades"
    for grade in ("0", "2", "10"):
        for i in range(3):
            write_image(root / "train" / grade / f"{i}.png", size=(8, 8))
            write_image(root / "test" / grade / f"{i}.png", size=(8, 8))
    data = tld.load_dataset(root)
    assert data.classes == ["0", "2", "10"]  # text order would put "10" before "2" and break ordinal grades
    assert tld.sort_classes({"b", "a", "10"}) == ["10", "a", "b"]


# =========================================================================== bad input: npz files


def _save_npz(path: Path, **overrides) -> Path:
    arrays = {f"{s}_{k}": v for s in ("train", "val", "test") for k, v in
              (("images", np.zeros((4, 8, 8, 3), np.uint8)), ("labels", np.array([[0], [1], [2], [4]])))}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_valid_small_npz_loads(tmp_path):
    data = tld.load_retinamnist(_save_npz(tmp_path / "ok.npz"))
    assert len(data.train) == 4 and data.train.labels.tolist() == [0, 1, 2, 4]


_NPZ_CASES = {
    "missing_key": r"lacks the key 'val_labels'.*has \[",
    "labels_out_of_range": r"train_labels must be integer grades 0-4; found values \[0, 1, 7\]",
    "count_mismatch": r"test_images has shape \(3, 8, 8, 3\).*for 4 labels",
    "float_images": r"train_images has shape .*float64",
    "npy_renamed": r"not a readable .npz file.*one array",
    "text_file": r"not a readable .npz file",
}


@pytest.mark.parametrize("case", list(_NPZ_CASES))
def test_wrong_npz_is_a_clear_error(tmp_path, case):
    match = _NPZ_CASES[case]
    path = tmp_path / "retinamnist_64.npz"
    if case == "missing_key":
        _save_npz(path, val_labels=None)
    elif case == "labels_out_of_range":
        _save_npz(path, train_labels=np.array([0, 1, 7, 1]))
    elif case == "count_mismatch":
        _save_npz(path, test_images=np.zeros((3, 8, 8, 3), np.uint8))
    elif case == "float_images":
        _save_npz(path, train_images=np.zeros((4, 8, 8, 3)))
    elif case == "npy_renamed":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((4, 8, 8, 3), np.uint8))
    else:
        path.write_text("<html>404 Not Found</html>")  # what a failed download can leave
    _expect_data_error(f"retinamnist_64.npz.*{match}", tld.load_retinamnist, path)


# =========================================================================== interrupted work: training


_TRAIN_CHILD = textwrap.dedent('''
    import json, os, signal, sys, time
    import numpy as np, torch
    from torch.utils.data import TensorDataset
    import tutorial_lib.train as tlt

    torch.set_num_threads(1)
    mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)

    class Watched(TensorDataset):
        """Counts items served; in mode 'kill_mid_epoch' it stops for the kill halfway through epoch 3."""
        served = 0

        def __getitem__(self, i):
            Watched.served += 1
            if mode == "kill_mid_epoch" and Watched.served == 2 * 90 + 45:
                open(out, "w").write("mid-epoch 3")
                time.sleep(120)  # the parent sends SIGKILL now
            return super().__getitem__(i)

    train = Watched(torch.from_numpy(x[:90]), torch.from_numpy(y[:90]))
    val = TensorDataset(torch.from_numpy(x[90:]), torch.from_numpy(y[90:]))
    config = tlt.TrainConfig(epochs=5, batch_size=16, lr_head=1e-2, lr_backbone=1e-3, seed=3)

    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                   torch.nn.Linear(16, 3))

    def run(checkpoint):
        m = model()
        history = tlt.fit_classifier(m, train, val, config, torch.device("cpu"), head_prefixes=["3"], n_classes=3,
                          train_labels=y[:90], checkpoint=checkpoint, progress=False)
        return {"history": history[["train_loss", "val_accuracy", "val_score"]].values.tolist(),
                "weights": [v.flatten().tolist() for v in m.state_dict().values()]}

    if mode == "kill_in_write":  # SIGKILL in the middle of writing epoch 3's checkpoint
        real_save, calls = torch.save, []

        def dying_save(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                real_save(obj, f, *args, **kwargs)
                with open(f, "r+b") as fh:
                    fh.truncate(os.path.getsize(f) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = dying_save
    if mode in ("kill_mid_epoch", "kill_in_write"):
        run(ckpt)
    else:  # "compare": an uninterrupted run, then each killed run resumed from its checkpoint
        result = {"straight": run(None)}
        for name in ckpt.split(","):
            result[name] = run(name)
        json.dump(result, open(out, "w"))
''')


def _child(script: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_epoch_and_mid_write_resume_to_the_same_result(tmp_path):
    """Two runs are killed with SIGKILL (halfway through epoch 3; while writing epoch 3's checkpoint),
    then resumed in a fresh process: both end with the metrics and weights of an uninterrupted run."""
    script = tmp_path / "child.py"
    script.write_text(_TRAIN_CHILD)
    mid_epoch, mid_write = tmp_path / "mid_epoch.pt", tmp_path / "mid_write.pt"
    marker = tmp_path / "reached"
    killed = _child(script, "kill_mid_epoch", str(mid_epoch), str(marker))
    in_write = _child(script, "kill_in_write", str(mid_write), str(tmp_path / "unused"))
    deadline = time.monotonic() + 120
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), killed.communicate()[0].decode()[-2000:]
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL
    assert in_write.wait(120) == -signal.SIGKILL, in_write.communicate()[0].decode()[-2000:]
    # what the kills left: complete checkpoints of epoch 2, and (mid-write) a half-written temporary file
    assert tck.load_checkpoint(mid_epoch)["epoch"] == 1 and tck.load_checkpoint(mid_write)["epoch"] == 1
    assert list(tmp_path.glob(".mid_write.pt.*.tmp"))
    out = tmp_path / "compare.json"
    compare = _child(script, "compare", f"{mid_epoch},{mid_write}", str(out))
    assert compare.wait(180) == 0, compare.communicate()[0].decode()[-2000:]
    result = json.loads(out.read_text())
    straight = result["straight"]
    assert len(straight["history"]) == 5
    for name in (str(mid_epoch), str(mid_write)):
        assert np.allclose(result[name]["history"], straight["history"], rtol=0, atol=1e-6)
        for a, b in zip(result[name]["weights"], straight["weights"]):
            assert np.allclose(a, b, rtol=0, atol=1e-6)
    assert tck.load_checkpoint(mid_write)["epoch"] == 4
    assert not list(tmp_path.glob(".*.tmp"))  # the re-run cleaned up after the killed writer


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return TensorDataset(torch.from_numpy(x[:40]), torch.from_numpy(y[:40])), \
        TensorDataset(torch.from_numpy(x[40:]), torch.from_numpy(y[40:]))


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_damaged_checkpoint_starts_afresh(tmp_path):
    train, val = _toy()
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(b"PK\3\4 half a zip")  # what a non-atomic writer killed mid-write leaves
    with pytest.raises(tck.CheckpointError, match=r"(?s)run\.pt is not a readable checkpoint.*Delete it"):
        tck.load_checkpoint(ckpt)
    config = tlt.TrainConfig(epochs=2, batch_size=8, seed=0)
    with pytest.warns(UserWarning, match="(?s)run.pt is not a readable checkpoint.*Starting afresh"):
        history = tlt.fit_classifier(_toy_model(), train, val, config, torch.device("cpu"), n_classes=2, checkpoint=ckpt,
                          progress=False)
    assert list(history["epoch"]) == [1, 2] and tck.load_checkpoint(ckpt)["epoch"] == 1


def test_cache_write_interrupted_leaves_no_file(tmp_path, monkeypatch):
    real_save = np.save

    def interrupted(file, array, *args, **kwargs):
        Path(file).write_bytes(b"\x93NUMPY half")
        raise KeyboardInterrupt  # Ctrl-C, or the kernel being interrupted, during the write

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _io.cached_array(_io.cache_file(tmp_path, {"k": 1}), lambda: np.arange(5.0))
    assert not any(tmp_path.iterdir())  # neither a partial entry nor a temporary file
    monkeypatch.setattr(np, "save", real_save)
    assert np.array_equal(_io.cached_array(_io.cache_file(tmp_path, {"k": 1}), lambda: np.arange(5.0)), np.arange(5.0))
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_damaged_feature_cache_is_recomputed(tmp_path):
    import tutorial_lib.handcrafted as tlh

    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    extractor = tlh.ImageFeatures([("colour", tlh.ColourHistogram())], size=32, cache_dir=tmp_path, progress=False)
    first = extractor.transform(images)
    path = extractor.cache_path(images)
    path.write_bytes(path.read_bytes()[:40])  # truncated, as by a full disk
    assert np.array_equal(extractor.transform(images), first)
    assert np.array_equal(np.load(path), first)


# =========================================================================== interrupted work: downloads


_PAYLOAD = bytes(range(256)) * 64


def _register_tiny(monkeypatch, cache: Path) -> Path:
    monkeypatch.setenv("TUTORIAL_LIB_CACHE", str(cache))
    entry = tld.DatasetInfo("tiny", "download", "other", "test entry", "CC0", "none", files=(
        tld.RemoteFile("tiny.bin", "https://example.invalid/tiny.bin",
                       "sha256:" + hashlib.sha256(_PAYLOAD).hexdigest()),))
    monkeypatch.setitem(tld.REGISTRY, "tiny", entry)
    return cache / "tiny" / "tiny.bin"


def _serve(monkeypatch, payload: bytes) -> list[str]:
    """Replace pooch's HTTP downloader by one that writes ``payload`` (no network)."""
    import pooch.core

    served = []

    def choose(url, progressbar=False):
        def download(url, output_file, pooch_obj):
            served.append(url)
            Path(output_file).write_bytes(payload)
        return download

    monkeypatch.setattr(pooch.core, "choose_downloader", choose)
    return served


_DOWNLOAD_CHILD = textwrap.dedent('''
    import hashlib, os, signal, sys
    from pathlib import Path
    import pooch.core
    import tutorial_lib.data as tld

    payload = bytes(range(256)) * 64
    tld.REGISTRY["tiny"] = tld.DatasetInfo("tiny", "download", "other", "test entry", "CC0", "none", files=(
        tld.RemoteFile("tiny.bin", "https://example.invalid/tiny.bin",
                       "sha256:" + hashlib.sha256(payload).hexdigest()),))

    def choose(url, progressbar=False):
        def download(url, output_file, pooch_obj):
            with open(output_file, "wb") as fh:
                fh.write(payload[: len(payload) // 3])
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # the laptop lid closes mid-download
        return download

    pooch.core.choose_downloader = choose
    tld.fetch("tiny")
''')


def test_download_killed_midway_leaves_nothing_that_passes_and_reruns_cleanly(tmp_path, monkeypatch):
    final = _register_tiny(monkeypatch, tmp_path / "cache")
    script = tmp_path / "child.py"
    script.write_text(_DOWNLOAD_CHILD)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env={**CHILD_ENV, "TUTORIAL_LIB_CACHE": str(
        tmp_path / "cache")}, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = [p for p in final.parent.iterdir() if p != final]
    assert not final.exists() and leftovers  # only pooch's temporary file, under another name
    old = time.time() - 3600
    for p in leftovers:
        os.utime(p, (old, old))
    served = _serve(monkeypatch, _PAYLOAD)
    assert tld.fetch("tiny") == [final] and final.read_bytes() == _PAYLOAD and served
    assert sorted(final.parent.iterdir()) == [final]  # the stale partial was removed


def test_damaged_cached_download_is_replaced_on_rerun(tmp_path, monkeypatch):
    final = _register_tiny(monkeypatch, tmp_path / "cache")
    final.parent.mkdir(parents=True)
    final.write_bytes(_PAYLOAD[:1000])  # a partial copy under the real name (e.g. an interrupted manual copy)
    with pytest.raises(tld.ChecksumError, match="tiny.bin does not match"):
        tld.fetch("tiny", download=False)
    served = _serve(monkeypatch, _PAYLOAD)
    with pytest.warns(UserWarning, match="removed it and downloading it again"):
        assert tld.fetch("tiny") == [final]
    assert final.read_bytes() == _PAYLOAD and len(served) == 1
    served.clear()
    assert tld.fetch("tiny") == [final] and not served  # verified copy re-used, nothing downloaded


def test_download_with_wrong_content_is_refused_and_not_kept(tmp_path, monkeypatch):
    final = _register_tiny(monkeypatch, tmp_path / "cache")
    _serve(monkeypatch, b"<html>captive portal login</html>")
    with pytest.raises(tld.ChecksumError, match="did not match"):
        tld.fetch("tiny")
    assert not final.exists() and not list(final.parent.glob("tmp*"))


def test_damaged_torchvision_googlenet_weights_are_downloaded_again(tmp_path, monkeypatch):
    from torchvision.models import googlenet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tlm.googlenet_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\3\4 interrupted copy")
    with pytest.raises(tlm.WeightsUnavailableError, match=r"(?s)googlenet-1378be20\.pth is damaged.*delete it"):
        tlm.load_backbone("torchvision_googlenet", download=False)
    torch.manual_seed(0)
    state = googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()

    def download(url, dst, *args, **kwargs):
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.warns(UserWarning, match="damaged.*downloading it again"):
        backbone = tlm.load_backbone("torchvision_googlenet", num_classes=2)
    assert torch.equal(backbone.model.conv1.conv.weight, state["conv1.conv.weight"])


# =========================================================================== unsafe files


def _library_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted((ROOT / "tutorial_lib").rglob("*.py")):  # tools/ too
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                calls.append((path.name, node))
    return calls


def _notebook_code() -> str:
    cells = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells += [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return "\n".join(cells)


def _name(func: ast.expr) -> str:
    return ast.unparse(func)


def test_every_torch_load_is_weights_only():
    loads = [(f, c) for f, c in _library_calls() if _name(c.func) == "torch.load"]
    assert loads  # the scan sees them
    for filename, call in loads:
        keywords = {k.arg: k.value for k in call.keywords}
        assert isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True, \
            f"{filename}:{call.lineno} torch.load without weights_only=True"
    for line in re.findall(r".*torch\.load\(.*", _notebook_code()):
        assert "weights_only=True" in line, line


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)  # a full pickle: loading it would run Path.touch
    with pytest.raises(tck.CheckpointError, match=r"evil\.pt holds Python objects other than tensors.*can run code"):
        tck.load_checkpoint(path)
    assert not marker.exists()


def test_no_shell_and_no_pickle_loading_in_the_library():
    for filename, call in _library_calls():
        name = _name(call.func)
        where = f"{filename}:{call.lineno}"
        assert name not in ("os.system", "os.popen", "eval", "exec", "pickle.load", "pickle.loads"), where
        for k in call.keywords:
            if k.arg == "shell":
                assert isinstance(k.value, ast.Constant) and k.value.value is False, f"{where}: shell=True"
            if k.arg == "allow_pickle":
                assert isinstance(k.value, ast.Constant) and k.value.value is False, f"{where}: allow_pickle"
        if name.startswith("subprocess."):
            assert call.args and isinstance(call.args[0], (ast.List, ast.Tuple)), f"{where}: command not a list"
    assert not re.search(r"shell\s*=\s*True|os\.system\(", _notebook_code())


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def test_safe_archive_extracts(tmp_path):
    archive = _zip(tmp_path / "photos.zip", {"train/coat/a.jpg": b"1", "test/coat/b.jpg": b"2"})
    out = tld.extract_archive(archive, tmp_path / "out")
    assert (out / "train" / "coat" / "a.jpg").read_bytes() == b"1"
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tf:
        tf.add(out / "train", arcname="train")
    assert (tld.extract_archive(tmp_path / "photos.tar.gz", tmp_path / "tar") / "train" / "coat" / "a.jpg").exists()


@pytest.mark.parametrize("kind", ["zip_dotdot", "zip_absolute", "zip_symlink", "tar_dotdot", "tar_absolute",
                                  "tar_symlink"])
def test_archive_path_traversal_is_refused(tmp_path, kind):
    if kind.startswith("zip"):
        members = {"ok.txt": b"fine"}
        if kind == "zip_dotdot":
            members["../../escaped.txt"] = b"bad"
        if kind == "zip_absolute":
            members[str(tmp_path / "escaped.txt")] = b"bad"
        archive = _zip(tmp_path / "a.zip", members, symlink="link" if kind == "zip_symlink" else None)
    else:
        archive = tmp_path / "a.tar"
        with tarfile.open(archive, "w") as tf:
            info = tarfile.TarInfo("ok.txt")
            info.size = 4
            tf.addfile(info, __import__("io").BytesIO(b"fine"))
            bad = tarfile.TarInfo({"tar_dotdot": "../escaped.txt", "tar_absolute": "/tmp/escaped.txt",
                                   "tar_symlink": "link"}[kind])
            if kind == "tar_symlink":
                bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(bad, __import__("io").BytesIO(b""))
    with pytest.raises(tld.UnsafeArchiveError, match="nothing was extracted"):
        tld.extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "escaped.txt").exists()


def _params_notebook(path: Path) -> Path:
    cell = new_code_cell('SEED = 0\nEPOCHS = 3\nLR = 0.1\nPROFILE = "auto"\nDEVICE = "auto"\nDATA_DIR = ""\n'
                         'FIGURES_DIR = ""\nQUICK = False')
    cell.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[cell], metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    return path


@pytest.mark.parametrize("name,value,match", [
    pytest.param("EPOCHS", 2.5, "EPOCHS expects a whole number", id="fractional_int"),
    pytest.param("EPOCHS", "3; import os", "EPOCHS expects a number", id="code_in_number"),
    pytest.param("LR", float("nan"), "LR must be a finite number", id="nan"),
    pytest.param("SEED", [1, 2], "SEED must be a plain number", id="list"),
    pytest.param("QUICK", 1, "QUICK expects true/false", id="int_for_bool"),
    pytest.param("PROFILE", "fast", "PROFILE 'fast' is not one of auto, quick", id="unknown_profile"),
    pytest.param("DEVICE", "tpu", "DEVICE 'tpu' is not one of", id="unknown_device"),
    pytest.param("FIGURES_DIR", "out\nimport os", "control character", id="newline_in_path"),
    pytest.param("DATA_DIR", "no/such/folder", "DATA_DIR 'no/such/folder' does not exist", id="missing_data_dir"),
])
def test_papermill_parameters_are_validated_before_running(tmp_path, name, value, match):
    nb = _params_notebook(tmp_path / "01_p.ipynb")
    with pytest.raises(ValueError, match=match):
        tlrun.check_parameters(nb, {name: value})


def test_papermill_path_parameters_are_made_absolute(tmp_path, monkeypatch):
    nb = _params_notebook(tmp_path / "01_p.ipynb")
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)  # the caller's folder, not notebooks/, is where relative paths start
    accepted = tlrun.check_parameters(nb, {"DATA_DIR": "photos", "FIGURES_DIR": "", "EPOCHS": 4.0,
                                           "DEVICE": "cuda:1"})
    assert accepted == {"DATA_DIR": str((tmp_path / "photos").resolve()), "FIGURES_DIR": "", "EPOCHS": 4, "DEVICE": "cuda:1"}
    assert isinstance(accepted["EPOCHS"], int)


# =========================================================================== resource faults


class _MemoryHungry(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit``, as a GPU that is too small would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.net = _toy_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.8 GiB total)")
        return self.net(x)


def test_out_of_memory_suggests_a_smaller_batch(tmp_path):
    train, val = _toy()
    config = tlt.TrainConfig(epochs=1, batch_size=16, seed=0)
    with pytest.raises(tle.OutOfMemory, match=r"batch size 16\. Fix: re-run with batch size 8 .*batch_size=8") as err:
        tlt.fit_classifier(_MemoryHungry(limit=8), train, val, config, torch.device("cpu"), n_classes=2, progress=False,
                checkpoint=tmp_path / "run.pt")
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    assert "checkpoint of the last finished epoch is kept" in str(err.value)
    # the advice works: half the batch fits (fit validates in batches of at least 128, hence that limit)
    history = tlt.fit_classifier(_MemoryHungry(limit=128), train, val, tlt.TrainConfig(epochs=1, batch_size=8, seed=0),
                      torch.device("cpu"), n_classes=2, progress=False)
    assert len(history) == 1
    assert "batch is already 1" in tle.out_of_memory_advice(1, torch.device("cuda"))


def test_cpu_allocator_failure_is_explained_too():
    @tle.explains_out_of_memory
    def step(config, device):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(tle.OutOfMemory, match="memory on cpu during step at batch size 64.*batch size 32"):
        step(tlt.TrainConfig(epochs=1, batch_size=64), torch.device("cpu"))

    @tle.explains_out_of_memory
    def other(config, device):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through untouched
        other(tlt.TrainConfig(epochs=1), torch.device("cpu"))


def test_no_gpu_falls_back_to_cpu_with_a_note(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tle.get_device("auto") == torch.device("cpu")  # auto: CPU is an expected answer, no warning
    with pytest.warns(UserWarning, match="no CUDA GPU is visible: using the CPU"):
        assert tle.get_device("cuda:0") == torch.device("cpu")
    with pytest.warns(UserWarning, match="MPS is not available: using the CPU"):
        assert tle.get_device("mps") == torch.device("cpu")
    assert tlprof.get_profile("auto", torch.device("cpu")).name == "default"  # the CPU-sized profile


def test_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"DEVICE='cuda:3', but this machine has 1 CUDA GPU\(s\)"):
        tle.get_device("cuda:3")
    assert tle.get_device("cuda:0") == torch.device("cuda:0")


# =========================================================================== the table in docs/reliability.md


def test_reliability_table_names_real_tests():
    """Every row of docs/reliability.md names a test that exists; at least 25 rows; no row without a test."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    assert len(rows) >= 25
    numbers = [int(r.split("|")[1]) for r in rows]
    assert numbers == list(range(1, len(rows) + 1))
    defined: dict[str, set[str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 5 and all(cells), f"incomplete row: {row}"
        ids = re.findall(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?`", cells[4])
        assert ids, f"row {cells[0]} names no test: {row}"
        for file, function in ids:
            if file not in defined:
                tree = ast.parse((ROOT / file).read_text())
                defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert function in defined[file], f"row {cells[0]}: {file}::{function} does not exist"
