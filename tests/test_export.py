"""Saved models: save/load without pickle, tl.predict and the CLI, ONNX, and bad input (docs/reliability.md).

One tiny finetune_top run per task (Lite0 at 64 px on a few embedded photos; DR at 32 px) is
shared by the tests; predictions are compared with the probabilities the training itself gave.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms

import tutorial_lib as tl
from tutorial_lib.tools import cli
from tutorial_lib.export import ModelFileError, load_model, save_model
from tutorial_lib.inference import PredictError

from test_reliability import _png_header_only

CPU = torch.device("cpu")


def _train(data, size: int, n_train: int, n_test: int, stages: int, **transform_options):
    """finetune_top on a seeded sample, the notebooks' way: preprocessing, then the backbone's transform."""
    pick = np.random.default_rng(0)
    splits = {name: split.subset(np.sort(pick.choice(len(split), n, replace=False)))
              for name, split, n in (("train", data.train, n_train), ("val", data.val, n_test),
                                     ("test", data.test, n_test))}
    backbone = tl.models.load_backbone("efficientnet_lite0", num_classes=len(data.classes))
    pre = tl.preprocess.clothing_pipeline(size, fill=tl.preprocess.pad_colour(backbone.data_config))
    tf = transforms.Compose([pre, tl.models.make_transform(backbone, input_size=(3, size, size), **transform_options)])
    frozen = tl.frozen.FrozenTrunk(backbone, tl.frozen.cut_before_last(backbone, stages), tf, CPU, batch_size=8,
                                  precision="float32")
    result = tl.train.finetune_top(frozen, splits, tl.train.TrainConfig(epochs=2, batch_size=8, seed=0),
                                   n_classes=len(data.classes), train_views=("identity",), progress=False)
    return backbone, pre, tf, splits, result


@pytest.fixture(scope="module")
def clothing_model(tmp_path_factory, clothing):
    # notebook 04's evaluation transform as it is: resize-and-pad, then the backbone's transform without its crop
    backbone, _, eval_tf, splits, result = _train(clothing, 64, 24, 12, 2, crop_pct=1.0)
    folder = save_model(backbone, tmp_path_factory.mktemp("models") / "clothing", classes=clothing.classes,
                        image_size=64, preprocess=eval_tf, task="clothing")
    return {"folder": folder, "backbone": backbone, "splits": splits, "result": result, "classes": clothing.classes}


@pytest.fixture(scope="module")
def dr_model(tmp_path_factory):
    data = tl.data.load_dataset("retinamnist")
    backbone, pre, _, splits, result = _train(data, 32, 16, 10, 1)
    # cut points inside the range of this tiny model's expected grades (the notebook fits them with
    # tl.grades.ordinal_predictions on the validation split), so that the rule decides something here
    thresholds = np.quantile(tl.grades.expected_grade(result.probs["val"]), [0.2, 0.4, 0.6, 0.8])
    root = tmp_path_factory.mktemp("dr")
    paths = []
    for i in range(len(splits["test"])):  # the 28 px retinas as PNG files, as a user would have them
        paths.append(root / "retinas" / f"retina_{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        splits["test"].image(i).save(paths[-1])
    folder = save_model(backbone, root / "dr", classes=data.classes, image_size=32, preprocess=pre,
                        decision="thresholds", thresholds=thresholds, task="dr")
    return {"folder": folder, "result": result, "thresholds": thresholds, "paths": paths,
            "classes": data.classes}


def _probs(table: pd.DataFrame, classes) -> np.ndarray:
    return table[[f"p_{c}" for c in classes]].to_numpy()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- save / load / predict


def test_reloaded_model_predicts_what_finetune_top_gave(clothing_model, tmp_path, capsys):
    """tl.predict on the test photos' files gives finetune_top's own test probabilities (up to the float16
    activation cache), the same classes, and the CLI writes the same table to CSV."""
    m = clothing_model
    paths = [str(p) for p in m["splits"]["test"].images]
    table = tl.predict(m["folder"], paths, device="cpu", progress=False)
    assert list(table.columns) == ["path", "prediction", *[f"p_{c}" for c in m["classes"]]]
    assert [s["name"] for s in load_model(m["folder"]).meta["preprocessing"]["steps"]] == ["ToRGB", "ResizePad"]
    assert table["path"].tolist() == paths
    probs = _probs(table, m["classes"])
    np.testing.assert_allclose(probs, m["result"].probs["test"], atol=2e-3)
    assert (probs.argmax(1) == m["result"].probs["test"].argmax(1)).all()
    assert table["prediction"].tolist() == [m["classes"][k] for k in m["result"].probs["test"].argmax(1)]
    # the reloaded network is the trained one, tensor for tensor
    loaded = load_model(m["folder"]).network.state_dict()
    for key, value in m["backbone"].model.state_dict().items():
        assert torch.equal(loaded[key], value.cpu()), key
    code, out, _ = _cli(capsys, "predict", str(m["folder"]), *paths[:4], "--out", str(tmp_path / "p.csv"),
                        "--batch-size", "3", "--device", "cpu", "--quiet")
    assert code == 0 and "4 image(s) predicted" in out
    csv = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(_probs(csv, m["classes"]), probs[:4], atol=1e-6)


def test_folders_globs_and_gradcam(clothing_model, tmp_path, capsys):
    """A folder is searched recursively, a glob expands, duplicates count once; --gradcam writes one PNG per image."""
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    for p in clothing_model["splits"]["test"].images[:3]:
        shutil.copy(p, photos / Path(p).name)
    (photos / "notes.txt").write_text("not an image")
    code, out, _ = _cli(capsys, "predict", str(clothing_model["folder"]), str(tmp_path / "photos"),
                        str(photos / "*.jpg"), "--out", str(tmp_path / "p.csv"), "--gradcam", str(tmp_path / "cams"),
                        "--quiet")
    assert code == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 3 and table["gradcam"].map(lambda p: Path(p).is_file()).all()
    cam = Image.open(table["gradcam"][0])
    assert cam.size == (64, 64) and cam.mode == "RGB"


def test_torchvision_googlenet_round_trip_keeps_its_input_scaling_and_drops_the_aux_heads(tmp_path):
    """GoogLeNet trained with auxiliary heads (finetune_full) is saved without them; transform_input survives."""
    backbone = tl.models.load_backbone("torchvision_googlenet", num_classes=3, pretrained=False, aux_logits=True)
    backbone.model.transform_input = True  # as with ImageNet weights
    save_model(backbone, tmp_path / "g", classes=["a", "b", "c"], image_size=64)
    loaded = load_model(tmp_path / "g" / "model.json")
    assert loaded.network.transform_input and loaded.network.aux1 is None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = backbone.model.eval()(x).softmax(1).numpy()
    np.testing.assert_allclose(loaded.predict_proba(x), expected, atol=1e-6)


def test_dr_model_uses_its_thresholds_and_reports_the_expected_grade(dr_model):
    """DR: the prediction is the expected grade cut at the saved thresholds, the notebook's rule."""
    table = tl.predict(dr_model["folder"], [str(p) for p in dr_model["paths"]], device="cpu", progress=False)
    assert "expected_grade" in table.columns
    probs = _probs(table, dr_model["classes"])
    np.testing.assert_allclose(probs, dr_model["result"].probs["test"], atol=2e-3)
    np.testing.assert_allclose(table["expected_grade"], tl.grades.expected_grade(probs), atol=1e-9)
    assert load_model(dr_model["folder"]).meta["thresholds"] == pytest.approx(list(dr_model["thresholds"]))
    grades = tl.grades.apply_thresholds(table["expected_grade"].to_numpy(), dr_model["thresholds"])
    assert table["prediction"].tolist() == [dr_model["classes"][g] for g in grades]
    notebook = tl.grades.apply_thresholds(tl.grades.expected_grade(dr_model["result"].probs["test"]),
                                         dr_model["thresholds"])
    assert (grades == notebook).mean() >= 0.9  # an expected grade within 2e-3 of a cut may fall either side
    assert len(set(grades)) > 1 and (grades != probs.argmax(1)).any()  # the cut points decided, not argmax


def test_onnx_export_matches_pytorch_on_real_photos(clothing_model, tmp_path, capsys):
    """export-onnx: dynamic batch, preprocessing documented beside it, onnxruntime == PyTorch (< 1e-4)."""
    import onnxruntime as ort

    out = tmp_path / "clothing.onnx"
    code, stdout, _ = _cli(capsys, "export-onnx", str(clothing_model["folder"]), str(out))
    assert code == 0 and out.is_file()
    doc = json.loads((tmp_path / "clothing.preprocessing.json").read_text())
    assert doc["output"]["classes"] == clothing_model["classes"] and doc["input"]["shape"] == ["batch", 3, 64, 64]
    # notebook 04's transform: padded to a square, then the backbone's resize without its centre crop
    assert load_model(clothing_model["folder"]).meta["preprocessing"]["backbone_transform"]["crop_pct"] == 1.0
    assert any("resize the shorter side to 64 px" in s for s in doc["steps"])  # floor(64 / 1.0)
    model = load_model(clothing_model["folder"])
    split = clothing_model["splits"]["test"]
    batch = torch.stack([model.transform(split.image(i)) for i in range(len(split))])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5, len(split)):
        got = session.run(["probabilities"], {"image": batch[:n].numpy()})[0]
        assert got.shape == (n, len(clothing_model["classes"]))
        assert np.abs(got - model.predict_proba(batch[:n])).max() < 1e-4


# --------------------------------------------------------------------------- bad model files


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_tampered_or_truncated_weights_are_refused(clothing_model, tmp_path, damage, capsys):
    folder = _copy(clothing_model["folder"], tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load_model(folder)
    code, _, err = _cli(capsys, "predict", str(folder), str(clothing_model["splits"]["test"].images[0]))
    assert code == 1 and "does not match the SHA-256" in err


def test_damaged_safetensors_header_is_refused(clothing_model, tmp_path):
    """A header that is not safetensors (digest updated to match) fails as a model-file error, not in Rust."""
    from tutorial_lib._io import file_sha256

    folder = _copy(clothing_model["folder"], tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    _edit_meta(folder, weights_sha256=file_sha256(weights))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(folder)


def test_model_from_another_version_is_refused(clothing_model, tmp_path, capsys):
    folder = _copy(clothing_model["folder"], tmp_path)
    _edit_meta(folder, library_version="9.0.0")
    with pytest.raises(ModelFileError, match=r"saved by tutorial_lib 9\.0\.0.*install tutorial_lib==9\.0\.0"):
        load_model(folder)
    code, _, err = _cli(capsys, "export-onnx", str(folder), str(tmp_path / "m.onnx"))
    assert code == 1 and "saved by tutorial_lib 9.0.0" in err and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("classes", [None, [], ["only one"]])
def test_missing_class_list_is_refused(clothing_model, tmp_path, classes):
    folder = _copy(clothing_model["folder"], tmp_path)
    _edit_meta(folder, classes=classes)
    with pytest.raises(ModelFileError, match="no usable class list.*classes=data.classes"):
        load_model(folder)


def test_save_refuses_a_class_list_that_does_not_fit(clothing_model, tmp_path):
    with pytest.raises(ValueError, match="classes has 3 names but the network's head has 10"):
        save_model(clothing_model["backbone"], tmp_path / "m", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"cannot save RandomHorizontalFlip.*Leave out random augmentation"):
        save_model(clothing_model["backbone"], tmp_path / "m", classes=clothing_model["classes"], image_size=64,
                   preprocess=transforms.Compose([transforms.RandomHorizontalFlip(), tl.preprocess.ResizePad(64)]))
    with pytest.raises(ValueError, match="needs 9 increasing cut points"):
        save_model(clothing_model["backbone"], tmp_path / "m", classes=clothing_model["classes"],
                   decision="thresholds", thresholds=[0.5, 1.5])


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    code, _, err = _cli(capsys, "predict", str(tmp_path / "nowhere"), str(tmp_path))
    assert code == 1 and "nowhere does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "predict", str(tmp_path / "empty"), str(tmp_path))
    assert code == 1 and "model.json is missing" in err


# --------------------------------------------------------------------------- bad images


def test_tiny_and_bomb_images_are_skipped_with_a_message(clothing_model, tmp_path, capsys):
    """A 1 x 1 px image and a PNG declaring 20,000 x 20,000 px are skipped and named; the good photo is predicted."""
    good = shutil.copy(clothing_model["splits"]["test"].images[0], tmp_path / "good.jpg")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "dot.png")
    _png_header_only(tmp_path / "huge.png", 20_000, 20_000)  # 400 megapixels declared in a few bytes
    code, out, err = _cli(capsys, "predict", str(clothing_model["folder"]), str(tmp_path), "--quiet",
                          "--out", str(tmp_path / "out" / "p.csv"))
    assert code == 0 and "1 image(s) predicted, 2 skipped" in out
    assert "dot.png: too small to classify (1x1 px" in err
    assert "huge.png: too large to decode safely" in err and "MAX_IMAGE_PIXELS" in err
    assert pd.read_csv(tmp_path / "out" / "p.csv")["path"].tolist() == [str(good)]
    with pytest.warns(UserWarning, match=r"(?s)Skipped 2 input\(s\).*dot\.png.*huge\.png"):
        table = tl.predict(clothing_model["folder"], tmp_path, progress=False)
    assert [Path(p) for p, _ in table.attrs["skipped"]] == [tmp_path / "dot.png", tmp_path / "huge.png"]


def test_cmyk_jpeg_and_16_bit_png_are_predicted_after_conversion(clothing_model, tmp_path):
    """A CMYK JPEG of a photo gets the photo's prediction; a 16-bit grey PNG that of its 8-bit grey twin."""
    photo = Image.open(clothing_model["splits"]["test"].images[1]).convert("RGB")
    photo.save(tmp_path / "rgb.jpg", quality=95)
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    grey = ImageOps.autocontrast(photo.convert("L"))  # spans 0-255, so 16-bit stretching is exact
    grey.save(tmp_path / "grey8.png")
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK" and Image.open(tmp_path / "grey16.png").mode.startswith("I")
    table = tl.predict(clothing_model["folder"], tmp_path, progress=False).set_index("path")
    probs = {Path(p).name: row for p, row in zip(table.index, _probs(table, clothing_model["classes"]))}
    assert np.abs(probs["cmyk.jpg"] - probs["rgb.jpg"]).max() < 0.03
    assert table.loc[str(tmp_path / "cmyk.jpg"), "prediction"] == table.loc[str(tmp_path / "rgb.jpg"), "prediction"]
    np.testing.assert_allclose(probs["grey16.png"], probs["grey8.png"], atol=1e-6)


def test_folder_with_no_images_is_a_clear_error(clothing_model, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no photos here")
    code, _, err = _cli(capsys, "predict", str(clothing_model["folder"]), str(tmp_path / "docs"))
    assert code == 1 and "No images found in" in err and "searched recursively" in err
    with pytest.raises(PredictError, match="No images found"):
        tl.predict(clothing_model["folder"], tmp_path / "docs", progress=False)


def test_the_backbone_transform_is_left_out_whole_or_nested():
    """eval_tf may be the backbone's own transform alone, or a preprocess.Compose ending in it."""
    from tutorial_lib import export

    backbone = tl.models.load_backbone("efficientnet_lite0", num_classes=3)
    tf = tl.models.make_transform(backbone, input_size=(3, 96, 96))
    assert export._steps_to_json(tf, repr(tf)) == []
    nested = tl.preprocess.Compose((tl.preprocess.ResizePad(96, (0, 0, 0)), tf))
    assert export._steps_to_json(nested, repr(tf)) == [{"name": "ResizePad", "params": {"size": 96, "fill": (0, 0, 0)}}]
    with pytest.raises(ValueError, match="cannot save"):
        export._steps_to_json(tf)  # not named as the backbone's: its steps are not preprocess transforms
