"""tutorial_lib.tools.prepare and data.load_dataset on the full datasets' layouts (small synthetic replicas),
Kaggle credentials, and the resumable one-off preparation into memory-mapped arrays."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import tutorial_lib.data as tld
import tutorial_lib.tools.prepare as tlp


def _fundus(path, grade: int, size=(72, 56)):
    """A synthetic fundus photo: a bright disc off-centre on black, its colour set by the grade."""
    image = Image.new("RGB", size)
    ImageDraw.Draw(image).ellipse((14, 4, 62, 52), fill=(180, 60 + 30 * grade, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture()
def eyepacs_replica(tmp_path):
    root = tmp_path / "eyepacs"
    rows = ["image,level"]
    for i in range(50):
        name = f"{i // 2}_{'left' if i % 2 else 'right'}"
        rows.append(f"{name},{i % 5}")
        _fundus(root / "train" / f"{name}.jpeg", i % 5)
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_eyepacs_layout(eyepacs_replica):
    data = tld.load_dataset("eyepacs", folder=eyepacs_replica)
    assert data.classes == ["0", "1", "2", "3", "4"] and data.name == "eyepacs"
    assert sum(len(s) for s in data.splits.values()) == 50
    assert data.train.images[0].parent.name == "train" and data.train.images[0].suffix == ".jpeg"


def test_aptos_layout(tmp_path):
    root = tmp_path / "aptos2019"
    rows = ["id_code,diagnosis"]
    for i in range(30):
        rows.append(f"a{i:04x},{i % 3}")
        _fundus(root / "train_images" / f"a{i:04x}.png", i % 3)
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    data = tld.load_dataset("aptos2019", folder=root)
    assert data.classes == ["0", "1", "2"] and sum(len(s) for s in data.splits.values()) == 30


def test_full_clothing_layout_drops_non_garment_labels_and_missing_photos(tmp_path):
    root = tmp_path / "clothing_full"
    rows = ["image,sender_id,label,kids"]
    for i in range(36):
        label = ["T-Shirt", "Shoes", "Pants", "Not sure"][i % 4]
        rows.append(f"id{i},1,{label},False")
        Image.new("RGB", (30, 40), (i, 100, 50)).save((root / "images").mkdir(parents=True, exist_ok=True) or
                                                      root / "images" / f"id{i}.jpg")
    rows.append("gone,1,Shoes,False")  # listed, no photo
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="gone"):
        data = tld.load_dataset("clothing_full", folder=root, min_per_class=5)
    assert data.classes == ["Pants", "Shoes", "T-Shirt"] and sum(len(s) for s in data.splits.values()) == 27


def test_full_fashion_catalogue_layout(tmp_path):
    inner = tmp_path / "fashion_products_full" / "fashion-dataset"
    (inner / "images").mkdir(parents=True)
    rows = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    for i in range(30):
        kind = ["Tshirts", "Watches", "Casual Shoes"][i % 3]
        rows.append(f"{1000 + i},Men,Apparel,Topwear,{kind},Blue,Summer,2012,Casual,Item {i}")
        Image.new("RGB", (24, 32), (i, 10, 10)).save(inner / "images" / f"{1000 + i}.jpg")
    rows.insert(5, "9999,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Name, with a comma")  # a known bad row
    (inner / "styles.csv").write_text("\n".join(rows) + "\n")
    (inner / "images.csv").write_text("filename,link\n1000.jpg,http://example.invalid/1000.jpg\n")
    data = tld.load_dataset("fashion_products_full", folder=inner.parent, min_per_class=5)
    assert data.classes == ["Casual Shoes", "Tshirts", "Watches"] and sum(len(s) for s in data.splits.values()) == 30


def test_missing_download_says_how_to_get_it(tmp_path):
    with pytest.raises(tld.DataUnavailableError, match="kaggle competitions download -c diabetic-retinopathy"):
        tld.load_dataset("eyepacs", folder=tmp_path / "nowhere")


def test_download_command_refuses_a_set_without_kaggle_and_lists_the_registrys(capsys):
    """`download NAME` takes its names from the registry: one with no Kaggle command is refused with the list."""
    from tutorial_lib.tools.cli import main

    assert main(["download", "retinamnist"]) == 1
    err = capsys.readouterr().err
    kaggle_sets = [name for name, info in tld.REGISTRY.items() if info.kaggle]
    assert "'retinamnist' is not downloaded from Kaggle" in err and kaggle_sets and all(n in err for n in kaggle_sets)


def test_kaggle_without_a_token_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))
    monkeypatch.setattr(tlp.shutil, "which", lambda _: "/usr/bin/kaggle")
    with pytest.raises(tld.DataError, match=r"(?s)kaggle\.json does not exist.*chmod 600"):
        tlp.kaggle_download("eyepacs", tmp_path / "eyepacs")


def test_kaggle_download_runs_the_documented_command(tmp_path, monkeypatch):
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))
    monkeypatch.setattr(tlp.shutil, "which", lambda _: "/usr/bin/kaggle")
    calls = []

    class Done:
        returncode = 0

    def fake_run(cmd, check):
        calls.append(cmd)
        return Done()

    assert tlp.kaggle_download("aptos2019", tmp_path / "a", run=fake_run) == tmp_path / "a"
    assert calls == [["/usr/bin/kaggle", "competitions", "download", "-c", "aptos2019-blindness-detection",
                      "-p", str(tmp_path / "a")]]


def test_kaggle_download_unpacks_the_competition_archive_safely(tmp_path, monkeypatch):
    import zipfile

    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))
    monkeypatch.setattr(tlp.shutil, "which", lambda _: "/usr/bin/kaggle")

    class Done:
        returncode = 0

    def fake_run(cmd, check, members=("train.csv", "train_images/a.png")):
        folder = Path(cmd[cmd.index("-p") + 1])
        with zipfile.ZipFile(folder / "aptos2019-blindness-detection.zip", "w") as zf:
            for name in members:
                zf.writestr(name, "x")
        return Done()

    folder = tlp.kaggle_download("aptos2019", tmp_path / "a", run=fake_run)
    assert (folder / "train.csv").is_file() and (folder / "train_images" / "a.png").is_file()
    with pytest.raises(tld.UnsafeArchiveError, match=r"\.\./escaped\.txt"):
        tlp.kaggle_download("aptos2019", tmp_path / "b", run=lambda cmd, check: fake_run(cmd, check, ["../escaped.txt"]))
    assert not (tmp_path / "escaped.txt").exists()


def test_prepare_resumes_after_an_interruption(eyepacs_replica, tmp_path):
    data = tld.load_dataset("eyepacs", folder=eyepacs_replica)
    out = tmp_path / "prepared"
    assert tlp.prepare(data, out, size=32, chunk_size=8, progress=False, max_chunks=3) is None
    state = json.loads((out / "progress.json").read_text())
    assert state["done"]["train"] == [0, 1, 2] and not (out / "manifest.json").exists()
    with pytest.raises(tld.DataError, match="interrupted"):
        tlp.load_prepared(out)
    images = np.load(out / "train_images.npy", mmap_mode="r+")
    images[24:27] = 77  # a chunk half-written when the process died: it must be written again
    images.flush()
    del images
    assert tlp.prepare(data, out, size=32, chunk_size=8, progress=False) == out
    straight = tlp.prepare(data, tmp_path / "straight", size=32, chunk_size=8, progress=False)
    for split in tlp.SPLITS:
        assert np.array_equal(np.load(out / f"{split}_images.npy"), np.load(straight / f"{split}_images.npy"))
    prepared = tlp.load_prepared(out)
    assert isinstance(prepared.train.images, np.memmap) and prepared.train.images.shape[1:] == (32, 32, 3)
    assert prepared.classes == data.classes and np.array_equal(prepared.test.labels, data.test.labels)
    centre = prepared.train.images[:, 16, 16].astype(int)
    assert (centre[:, 0] > 150).all()  # the disc was found and centred
    assert json.loads((out / "manifest.json").read_text())["crop"] == "disc"


def test_prepared_embedded_clothing_feeds_the_training_loop(clothing, tmp_path):
    import torch

    from tutorial_lib.train import TrainConfig, fit_classifier

    small = tld.ClassificationData("clothing", clothing.classes, clothing.train.subset(range(24)),
                                   clothing.val.subset(range(8)), clothing.test.subset(range(8)), info=clothing.info)
    out = tlp.prepare(small, tmp_path / "c", size=40, chunk_size=10, progress=False)
    data = tlp.load_prepared(out)
    assert data.split_note.endswith("prepared at 40 px (pad)") and len(data.train) == 24
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, len(data.classes)))
    history = fit_classifier(net, tld.ImageDataset(data.train, to_tensor), tld.ImageDataset(data.val, to_tensor),
                  TrainConfig(epochs=1, batch_size=8), torch.device("cpu"), n_classes=len(data.classes),
                  train_labels=data.train.labels, progress=False)
    assert len(history) == 1


def test_prepare_in_worker_processes_lists_damaged_files(eyepacs_replica, tmp_path):
    data = tld.load_dataset("eyepacs", folder=eyepacs_replica)
    damaged = data.train.images[3]
    damaged.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="1 image"):
        serial = tlp.prepare(data, tmp_path / "serial", size=24, chunk_size=16, progress=False)
    with pytest.warns(UserWarning, match="1 image"):
        parallel = tlp.prepare(data, tmp_path / "parallel", size=24, chunk_size=16, workers=2, progress=False)
    assert np.array_equal(np.load(serial / "train_images.npy"), np.load(parallel / "train_images.npy"))
    manifest = json.loads((parallel / "manifest.json").read_text())
    assert manifest["failed"]["train"][0][0] == 3 and str(damaged) in manifest["failed"]["train"][0][1]
    assert len(tlp.load_prepared(parallel).train) == len(data.train) - 1


def test_cli_prepare_then_train_on_the_prepared_folder(photo_folder, tmp_path, capsys):
    from tutorial_lib.tools.cli import main

    out = tmp_path / "prepared"
    assert main(["prepare", str(photo_folder), "--size", "32", "--output", str(out), "--workers", "0"]) == 0
    assert tlp.is_prepared(out) and str(out) in capsys.readouterr().out
    results = tmp_path / "train.json"
    assert main(["train", "--data", str(out), "--backbone", "efficientnet_lite0", "--strategy", "finetune_top",
                 "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--num-workers", "0", "--device", "cpu",
                 "--quiet", "--results", str(results)]) == 0
    summary = json.loads(results.read_text())
    assert summary["world_size"] == 1 and summary["strategy"] == "finetune_top" and "prepared at 32 px" in summary["split_note"]
