"""tutorial_lib.data: embedded sets, registry, checksums, your own folders and CSV files."""
from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tutorial_lib.data as tld
from conftest import write_image


# --------------------------------------------------------------------------- embedded sets


def test_retinamnist_is_the_official_file():
    dr = tld.load_dataset("retinamnist")
    assert (len(dr.train), len(dr.val), len(dr.test)) == (1080, 120, 400)
    assert dr.train.images.shape == (1080, 28, 28, 3) and dr.train.images.dtype == np.uint8
    # Train grade counts published with the data (README of the gathered copy / MedMNIST).
    assert np.bincount(dr.train.labels).tolist() == [486, 128, 206, 194, 66]
    path = tld.embedded_data_dir() / "retinamnist" / "retinamnist.npz"
    assert hashlib.md5(path.read_bytes()).hexdigest() == "bd4c0672f1bba3e3a89f0e4e876791e4"


def test_clothing_keeps_official_test_split_whole(clothing):
    assert len(clothing.classes) == 10
    assert len(clothing.test) == 372 and len(clothing.val) == 341
    counts = clothing.class_counts()
    assert counts["test"].min() >= 12 and counts["train"].min() >= 50
    img = clothing.test.image(0)
    assert img.mode == "RGB" and max(img.size) <= 224


def test_fashion_catalogue_has_seven_tag_fields():
    fashion = tld.load_tag_dataset("fashion")
    assert fashion.fields == list(tld.FASHION_FIELDS)
    assert len(fashion) == 2971 and fashion.dropped == {}
    assert fashion.table["articleType"].nunique() >= 50
    assert fashion.image(0).size == (224, 224) or max(fashion.image(0).size) <= 224


def test_embedded_data_stays_small():
    total = sum(p.stat().st_size for p in tld.embedded_data_dir().rglob("*") if p.is_file())
    # 65 MB of datasets since the whole official clothing train split is embedded, + 28.8 MB of GoogLeNet's weights
    # (data/weights/); the limit for everything under data/ is 140 MB, so that a clone stays small
    assert total <= 140e6


def _copy_embedded(tmp_path: Path, prefix: str) -> Path:
    src = tld.embedded_data_dir()
    dst = tmp_path / "data"
    shutil.copytree(src / prefix.rstrip("/"), dst / prefix.rstrip("/"))
    shutil.copy(src / "MANIFEST.sha256", dst / "MANIFEST.sha256")
    return dst


def test_altered_embedded_file_is_refused(tmp_path, monkeypatch):
    data_dir = _copy_embedded(tmp_path, "retinamnist/")
    monkeypatch.setenv("TUTORIAL_LIB_DATA_DIR", str(data_dir))
    npz = data_dir / "retinamnist" / "retinamnist.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(tld.ChecksumError, match=r"retinamnist/retinamnist.npz \(checksum mismatch\)"):
        tld.load_dataset("retinamnist")


def test_missing_embedded_file_is_named(tmp_path, monkeypatch):
    data_dir = _copy_embedded(tmp_path, "retinamnist/")
    monkeypatch.setenv("TUTORIAL_LIB_DATA_DIR", str(data_dir))
    (data_dir / "retinamnist" / "retinamnist.npz").unlink()
    with pytest.raises(tld.ChecksumError, match=r"(?s)retinamnist.npz \(missing\).*git checkout"):
        tld.load_dataset("retinamnist")


def test_truncated_npz_gives_a_clear_error(tmp_path):
    bad = tmp_path / "retinamnist_64.npz"
    bad.write_bytes((tld.embedded_data_dir() / "retinamnist" / "retinamnist.npz").read_bytes()[:5000])
    with pytest.raises(tld.DataError, match="retinamnist_64.npz"):
        tld.load_retinamnist(bad)


# --------------------------------------------------------------------------- registry and downloads


def test_registry_entries_are_complete():
    for info in tld.REGISTRY.values():
        assert info.licence and info.citation and info.description
        if info.kind == "download":
            assert info.files
            for remote in info.files:
                algorithm, _, digest = remote.known_hash.partition(":")
                assert remote.url.startswith("http") and {"md5": 32, "sha256": 64}[algorithm] == len(digest)
        if info.kind == "manual":
            assert "<cache>" in info.manual_steps
    assert {"retinamnist_64", "retinamnist_128", "retinamnist_224", "fashion_mnist", "eyepacs", "aptos2019",
            "clothing_full", "fashion_products_full"} <= set(tld.REGISTRY)


def test_fetch_offline_names_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_LIB_CACHE", str(tmp_path))
    with pytest.raises(tld.DataUnavailableError) as err:
        tld.fetch("retinamnist_224", download=False)
    message = str(err.value)
    assert "retinamnist_224.npz" in message and "zenodo.org" in message
    assert str(tmp_path / "retinamnist_224" / "retinamnist_224.npz") in message


def test_fetch_download_failure_is_reported(tmp_path, monkeypatch):
    import pooch

    monkeypatch.setenv("TUTORIAL_LIB_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(tld.DataUnavailableError, match="(?s)train-images-idx3-ubyte.gz.*Fix:.*Name or service"):
        tld.fetch("fashion_mnist")
    assert not list(tmp_path.rglob("*.gz"))


def test_fetch_uses_a_verified_cached_file_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_LIB_CACHE", str(tmp_path))
    payload = b"real bytes"
    entry = tld.DatasetInfo("tiny", "download", "other", "test entry", "CC0", "none", files=(
        tld.RemoteFile("tiny.bin", "https://example.invalid/tiny.bin",
                       "sha256:" + hashlib.sha256(payload).hexdigest()),))
    monkeypatch.setitem(tld.REGISTRY, "tiny", entry)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "tiny.bin").write_bytes(payload)
    assert tld.fetch("tiny") == [tmp_path / "tiny" / "tiny.bin"]
    (tmp_path / "tiny" / "tiny.bin").write_bytes(b"tampered")
    with pytest.raises(tld.ChecksumError, match="tiny.bin does not match"):
        tld.fetch("tiny")


def test_manual_dataset_explains_the_kaggle_step(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_LIB_CACHE", str(tmp_path))
    with pytest.raises(tld.DataUnavailableError, match="kaggle competitions download -c diabetic-retinopathy"):
        tld.fetch("eyepacs")


def test_one_resolver_reads_every_registered_layout(tmp_path):
    """load_dataset reads a downloadable set from the folder that holds it, by its registry row's layout."""
    arrays = {f"{s}_{k}": v for s in ("train", "val", "test") for k, v in
              (("images", np.zeros((4, 8, 8, 3), np.uint8)), ("labels", np.array([[0], [1], [2], [4]])))}
    np.savez(tmp_path / "retinamnist_64.npz", **arrays)
    data = tld.load_dataset("retinamnist_64", folder=tmp_path)
    assert data.name == "retinamnist_64" and data.info is tld.REGISTRY["retinamnist_64"] and len(data.train) == 4
    assert tld.locate(tmp_path) == (None, tmp_path)
    with pytest.raises(tld.DataError, match="use load_tag_dataset"):
        tld.load_dataset("fashion")
    with pytest.raises(tld.DataError, match="use load_dataset"):
        tld.load_tag_dataset("clothing")
    with pytest.raises(tld.DataError, match="fetch"):
        tld.load_dataset("fashion_mnist")


def test_kaggle_rows_carry_their_command():
    kaggle = {name: info for name, info in tld.REGISTRY.items() if info.kaggle}
    assert set(kaggle) == {"eyepacs", "aptos2019", "fashion_products_full"}
    for name, info in kaggle.items():
        command = " ".join(["kaggle", *info.kaggle_command(f"<cache>/{name}")])
        assert command in info.manual_steps and "<kaggle>" not in info.manual_steps


def test_stratified_split_holds_out_a_fraction_or_a_count_and_keeps_groups_apart():
    y = np.repeat(np.arange(4), 10)
    keep, held = tld.stratified_split(np.arange(40), y, 0.25, seed=0)
    assert len(held) == 10 and np.bincount(y[held]).min() >= 2  # stratified: every class held out
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(40)) and (np.diff(keep) > 0).all()
    keep, held = tld.stratified_split(np.arange(40), y, 8, seed=0)
    assert len(held) == 8 and set(y[held]) == {0, 1, 2, 3}
    keep, held = tld.stratified_split(np.arange(9), np.arange(9) % 3, 0.1, seed=0)  # too small to stratify
    assert len(held) == 1
    groups = np.arange(40) // 2
    keep, held = tld.stratified_split(np.arange(40), y, 0.2, seed=1, groups=groups)
    assert not set(groups[keep]) & set(groups[held])


def test_unknown_dataset_lists_the_registry():
    with pytest.raises(tld.DataError, match="Registered: retinamnist"):
        tld.fetch("imagenet")


# --------------------------------------------------------------------------- images of every kind


@pytest.mark.parametrize("mode,kwargs,suffix", [
    ("RGBA", {}, ".png"), ("L", {}, ".jpg"), ("CMYK", {}, ".jpg"), ("I;16", {}, ".png"), ("P", {}, ".gif"),
])
def test_open_image_always_gives_8bit_rgb(tmp_path, mode, kwargs, suffix):
    path = tmp_path / f"img{suffix}"
    if mode == "P":
        Image.new("RGB", (40, 30), (10, 200, 10)).convert("P").save(path)
    else:
        write_image(path, mode, **kwargs)
    img = tld.open_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert np.asarray(img).dtype == np.uint8


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert np.asarray(tld.open_image(path)).min() == 255


def test_sixteen_bit_range_is_kept(tmp_path):
    path = write_image(tmp_path / "deep.png", "I;16")
    array = np.asarray(tld.open_image(path))
    assert array.min() == 0 and array.max() == 255


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert tld.open_image(path).size == (20, 60)


# --------------------------------------------------------------------------- your own folders


def test_own_folder_gets_seeded_stratified_split(photo_folder):
    a = tld.load_dataset(photo_folder, seed=1)
    b = tld.load_dataset(photo_folder, seed=1)
    c = tld.load_dataset(photo_folder, seed=2)
    assert a.classes == sorted(p.name for p in photo_folder.iterdir())
    assert len(a.train) + len(a.val) + len(a.test) == 30
    assert sorted(np.bincount(a.test.labels)) == [2, 2, 2]  # stratified: 20 % of 10 per class
    assert a.test.images == b.test.images and a.test.images != c.test.images
    assert "seed 1" in a.split_note
    assert isinstance(a.train.image(0), Image.Image)


def test_bad_files_are_skipped_with_one_warning(photo_folder):
    cls = next(p for p in photo_folder.iterdir())
    (cls / "empty.jpg").write_bytes(b"")
    good = next(cls.glob("*.jpg"))
    (cls / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (cls / "notes.txt").write_text("not an image")
    (cls / "fake.png").write_text("not a png either")
    (cls / ".DS_Store").write_bytes(b"\0\0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = tld.load_dataset(photo_folder)
    messages = [str(w.message) for w in caught if "Skipped" in str(w.message)]
    assert len(messages) == 1
    for name in ("empty.jpg", "truncated.jpg", "notes.txt", "fake.png"):
        assert name in messages[0]
    assert ".DS_Store" not in messages[0]
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_unicode_and_spaces_in_names(photo_folder):
    cls = next(p for p in photo_folder.iterdir())
    renamed = cls.parent / "robe d'été ü"
    cls.rename(renamed)
    data = tld.load_dataset(photo_folder)
    assert "robe d'été ü" in data.classes


def test_split_folders_are_honoured_and_val_carved_from_train(photo_folder, tmp_path):
    root = tmp_path / "with splits"
    for cls in photo_folder.iterdir():
        files = sorted(cls.iterdir())
        for split, chunk in (("train", files[:7]), ("test", files[7:])):
            (root / split / cls.name).mkdir(parents=True)
            for f in chunk:
                shutil.copy(f, root / split / cls.name / f.name)
    data = tld.load_dataset(root)
    assert len(data.test) == 9 and len(data.train) + len(data.val) == 21 and len(data.val) > 0
    assert "validation" in data.split_note


def test_empty_class_folder_is_an_error(photo_folder):
    (photo_folder / "socks").mkdir()
    with pytest.raises(tld.DataError, match="socks holds no images"):
        tld.load_dataset(photo_folder)


def test_single_class_is_an_error(photo_folder):
    for cls in list(photo_folder.iterdir())[1:]:
        shutil.rmtree(cls)
    with pytest.raises(tld.DataError, match="at least 2 classes"):
        tld.load_dataset(photo_folder)


def test_class_only_in_test_is_an_error(photo_folder, tmp_path):
    root = tmp_path / "splits"
    classes = sorted(photo_folder.iterdir())
    for cls in classes[:2]:
        shutil.copytree(cls, root / "train" / cls.name)
    shutil.copytree(classes[2], root / "test" / classes[2].name)
    with pytest.raises(tld.DataError, match=f"{classes[2].name}.*not in train"):
        tld.load_dataset(root)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(tld.DataError, match="does not exist"):
        tld.load_dataset(tmp_path / "nowhere")


# --------------------------------------------------------------------------- CSV manifests


def _manifest(photo_folder: Path) -> pd.DataFrame:
    rows = [{"image": str(p.relative_to(photo_folder)), "label": p.parent.name}
            for p in sorted(photo_folder.rglob("*.jpg"))]
    return pd.DataFrame(rows)


def test_csv_manifest_loads_like_a_folder(photo_folder):
    _manifest(photo_folder).to_csv(photo_folder / "manifest.csv", index=False)
    data = tld.load_dataset(photo_folder / "manifest.csv", seed=0)
    folder = tld.load_dataset(photo_folder, seed=0)
    assert data.classes == folder.classes
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_csv_split_column_is_honoured(photo_folder):
    table = _manifest(photo_folder)
    table["split"] = ["test" if i % 5 == 0 else "train" for i in range(len(table))]
    table.to_csv(photo_folder / "m.csv", index=False)
    data = tld.load_dataset(photo_folder / "m.csv")
    # no val rows: validation comes out of train, as for train/ + test/ folders (it used to be empty)
    assert len(data.test) == 6 and len(data.val) == 3 and len(data.train) == 21
    assert set(data.val.labels) == set(data.train.labels) == {0, 1, 2}


def test_csv_missing_column_is_named(photo_folder):
    _manifest(photo_folder).rename(columns={"label": "kind"}).to_csv(photo_folder / "m.csv", index=False)
    with pytest.raises(tld.DataError, match="no label column 'label'.*'kind'"):
        tld.load_dataset(photo_folder / "m.csv")


def test_csv_blank_label_is_named(photo_folder):
    table = _manifest(photo_folder)
    table.loc[3, "label"] = ""
    table.to_csv(photo_folder / "m.csv", index=False)
    with pytest.raises(tld.DataError, match=r"blank 'label' in data row\(s\) \[4\]"):
        tld.load_dataset(photo_folder / "m.csv")


def test_csv_unknown_label_is_named(photo_folder):
    table = _manifest(photo_folder)
    table.to_csv(photo_folder / "m.csv", index=False)
    known = sorted(table["label"].unique())[:2]
    with pytest.raises(tld.DataError, match="unknown label"):
        tld.load_csv_manifest(photo_folder / "m.csv", classes=known)


def test_csv_duplicates_and_missing_images_are_warned(photo_folder):
    table = _manifest(photo_folder)
    table = pd.concat([table, table.iloc[:2], pd.DataFrame([{"image": "gone.jpg", "label": table.label[0]}])])
    table.to_csv(photo_folder / "m.csv", index=False)
    with pytest.warns(UserWarning) as caught:
        data = tld.load_dataset(photo_folder / "m.csv")
    text = " ".join(str(w.message) for w in caught)
    assert "2 duplicate row(s)" in text and "gone.jpg" in text
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_tag_folder_with_missing_image(tmp_path):
    fashion = tld.load_tag_dataset("fashion")
    root = tmp_path / "catalogue"
    (root / "images").mkdir(parents=True)
    rows = fashion.table.iloc[:5].drop(columns="path")
    for image_id in rows["id"].iloc[:4]:
        shutil.copy(tld.embedded_data_dir() / "fashion" / "images" / f"{image_id}.jpg", root / "images")
    rows.to_csv(root / "styles.csv", index=False)
    with pytest.warns(UserWarning, match="1 row"):
        tags = tld.load_tag_dataset(root)
    assert len(tags) == 4 and tags.dropped == {"image missing": 1}


# --------------------------------------------------------------------------- torch dataset


def test_image_dataset_feeds_a_dataloader(clothing):
    from torchvision import transforms

    ds = tld.ImageDataset(clothing.test.subset(range(6)), transforms.Compose(
        [transforms.Resize((32, 32)), transforms.ToTensor()]))
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == clothing.test.labels[:6].tolist()


# --------------------------------------------------------------------------- grouped splits (patients)


def _groups_by_split(data):
    return {name: set(split.groups) for name, split in data.splits.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_pattern_keeps_each_patient_on_one_side(tmp_path, seed):
    from conftest import write_fundus_folder

    root = write_fundus_folder(tmp_path / "fundus", n_patients=30, size=(64, 48))
    data = tld.load_dataset(root, seed=seed, group_pattern=r"Patient(\d+)")
    groups = _groups_by_split(data)
    assert groups["train"].isdisjoint(groups["val"]) and groups["train"].isdisjoint(groups["test"])
    assert groups["val"].isdisjoint(groups["test"]) and set.union(*groups.values()) == {str(n) for n in range(30)}
    assert sum(len(s) for s in data.splits.values()) == 60
    assert f"groups per split train {len(groups['train'])}, val {len(groups['val'])}, test {len(groups['test'])}" \
        in data.split_note
    # the image-by-image split puts the two eyes of some patient on both sides: what the groups prevent
    plain = tld.load_dataset(root, seed=seed)
    sides = {}
    for name, split in plain.splits.items():
        for f in split.images:
            sides.setdefault(Path(f).name.split("_")[0], set()).add(name)
    assert any(len(s) > 1 for s in sides.values())


def test_group_pattern_matching_nothing_is_a_clear_error(tmp_path):
    from conftest import write_fundus_folder

    root = write_fundus_folder(tmp_path / "fundus", n_patients=6, size=(64, 48))
    with pytest.raises(tld.DataError, match=r"'Subject\(\\\\d\+\)' matches none of the 12 file names, e\.g\. '0/Patient"):
        tld.load_dataset(root, group_pattern=r"Subject(\d+)")
    with pytest.raises(tld.DataError, match="not a valid regular expression"):
        tld.load_dataset(root, group_pattern=r"Patient(\d+")


def test_csv_group_column_keeps_groups_together(tmp_path, photo_folder):
    files = sorted(p.relative_to(photo_folder).as_posix() for p in photo_folder.rglob("*.jpg"))
    table = pd.DataFrame({"image": files, "label": [f.split("/")[0] for f in files],
                          "group": [f"g{i // 3}" for i in range(len(files))]})  # 3 photos per group
    table.to_csv(photo_folder / "m.csv", index=False)
    data = tld.load_dataset(photo_folder / "m.csv", seed=0)
    groups = _groups_by_split(data)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) \
        and not (groups["val"] & groups["test"])
    assert "grouped by column 'group'" in data.split_note
    limited = data.train.subset([0, 1])  # subsets (quick profiles) keep the groups
    assert list(limited.groups) == list(data.train.groups[:2])


def test_group_pattern_warns_when_split_folders_share_a_patient(tmp_path):
    from conftest import write_fundus_photo

    for split, eye in (("train", "L"), ("test", "R")):
        for grade in range(2):
            for n in range(3):
                write_fundus_photo(tmp_path / split / str(grade) / f"Patient{n + 3 * grade}_{eye}.jpg", (64, 48), grade)
    with pytest.warns(UserWarning, match=r"6 group\(s\) of GROUP_PATTERN .* in two split folders"):
        tld.load_dataset(tmp_path, group_pattern=r"Patient(\d+)")


def test_grouped_split_note_counts_the_groups_after_rebalancing(tmp_path):
    """Tiny grouped data: a class missing from validation gets a whole patient moved, and the note says so."""
    from conftest import write_fundus_photo

    for grade, patients in ((0, range(0, 6)), (1, range(6, 9))):
        for n in patients:
            for eye in "LR":
                write_fundus_photo(tmp_path / str(grade) / f"Patient{n}_{eye}.jpg", (64, 48), grade)
    for seed in range(4):
        data = tld.load_dataset(tmp_path, seed=seed, group_pattern=r"Patient(\d+)")
        sides = {s: set(split.groups) for s, split in data.splits.items()}
        assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"]) \
            and not (sides["val"] & sides["test"])
        for split in (data.train, data.val):
            assert set(split.labels) == {0, 1}
        counts = ", ".join(f"{s} {len(g)}" for s, g in sides.items())
        assert data.split_note.endswith(f"groups per split {counts}")
