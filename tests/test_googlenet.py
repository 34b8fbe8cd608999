"""Google's reference GoogLeNet: the weights are right, the label order is ImageNet's, everything the library does works.

The independent forward pass below is written from the reference definition (``googlenet.lua`` in Google's
``inception.torch`` repository: the layers, the LRN constants, the branch order) with Google's own padding
convention ("same", as the reference notebook ``inception.ipynb`` says; its printed top-5 for ``dog.jpg``
is reproduced below only with that padding). It uses plain ``torch.nn.functional`` calls on the weights
file, by Google's layer names, and shares no code with :mod:`tutorial_lib.googlenet`.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tutorial_lib as tl
import tutorial_lib.googlenet as tlgn
import tutorial_lib.models as tlm
from tutorial_lib import explain, frozen

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "data" / "weights" / "googlenet-inception-v1"
SHARED = ROOT.parent / "shared" / "weights" / "googlenet-inception-v1"

# googlenet.lua: inception(depth, input, {{1x1}, {3x3 reduce, 3x3}, {5x5 reduce, 5x5}, {pool, pool proj}}, name)
LUA_BLOCKS = [("3a", 192), ("3b", 256), ("pool", None), ("4a", 480), ("4b", 508), ("4c", 512), ("4d", 512),
              ("4e", 528), ("pool", None), ("5a", 832), ("5b", 832)]
# inception.ipynb, "Top five predictions" for dog.jpg (its own preprocessing: centre square, skimage resize, *256 - 117)
NOTEBOOK_TOP5 = ["dalmatian", "Great Dane", "English setter", "muzzle", "German short-haired pointer"]


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    total = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2), value=value)


def _lrn(x: torch.Tensor, size: int = 11, alpha: float = 0.00109999999404, beta: float = 0.5, k: float = 2.0):
    """SpatialCrossMapLRN: x / (k + alpha / size * sum of x^2 over `size` neighbouring channels) ^ beta."""
    sq = F.pad(x.pow(2), (0, 0, 0, 0, size // 2, size // 2))
    window = torch.stack([sq[:, i:i + x.shape[1]] for i in range(size)]).sum(0)
    return x / (k + alpha / size * window).pow(beta)


def reference_forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of Google's GoogLeNet for ``x`` (0-255 minus 117), from ``googlenet.lua``, layer by layer."""
    def conv(name, x, stride=1):
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        return F.relu(F.conv2d(_same_pad(x, weight.shape[-1], stride), weight, bias, stride))

    def pool(x, stride):
        return F.max_pool2d(_same_pad(x, 3, stride, -math.inf), 3, stride)

    x = pool(conv("conv2d0", x, 2), 2)
    x = _lrn(x)
    x = _lrn(conv("conv2d2", conv("conv2d1", x)))
    x = pool(x, 2)
    for name, _ in LUA_BLOCKS:
        if name == "pool":
            x = pool(x, 2)
            continue
        m = f"mixed{name}"
        x = torch.cat([conv(f"{m}_1x1", x), conv(f"{m}_3x3", conv(f"{m}_3x3_bottleneck", x)),
                       conv(f"{m}_5x5", conv(f"{m}_5x5_bottleneck", x)), conv(f"{m}_pool_reduce", pool(x, 1))], 1)
    return F.linear(x.mean(dim=(2, 3)), w["softmax2.weight"], w["softmax2.bias"])


def google_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights file's tensors under Google's layer names (the file stores them under the module names)."""
    ours = {"conv1.0": "conv2d0", "conv2.0.0": "conv2d1", "conv2.1.0": "conv2d2", "fc": "softmax2"}
    branch = {"branch1.0": "1x1", "branch2.0.0": "3x3_bottleneck", "branch2.1.0": "3x3", "branch3.0.0": "5x5_bottleneck",
              "branch3.1.0": "5x5", "branch4.1.0": "pool_reduce"}
    out = {}
    for key, tensor in state.items():
        module, kind = key.rsplit(".", 1)
        if module.startswith("inception"):
            block, rest = module.split(".", 1)
            module = f"mixed{block.removeprefix('inception')}_{branch[rest]}"
        out[f"{ours.get(module, module)}.{kind}"] = tensor
    return out


def notebook_input(image: Image.Image) -> torch.Tensor:
    """inception.ipynb's preprocessing: centre square, skimage resize to 224 (no anti-aliasing), * 256 - 117."""
    from skimage import transform

    img = np.asarray(image.convert("RGB"))
    side = min(img.shape[:2])
    top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    resized = transform.resize(img[top:top + side, left:left + side], (224, 224), anti_aliasing=False)
    return torch.from_numpy((resized * 256 - 117).astype(np.float32)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def imagenet_googlenet():
    return tlm.load_backbone("googlenet")


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return {"dog": Image.open(WEIGHTS_DIR / "dog.jpg"), "chelsea": Image.fromarray(data.chelsea()),
            "coffee": Image.fromarray(data.coffee())}


def test_logits_equal_an_independent_forward_pass(imagenet_googlenet, photos):
    from safetensors.torch import load_file

    weights = google_names(load_file(str(WEIGHTS_DIR / tlgn.WEIGHTS_FILE)))
    x = torch.cat([notebook_input(image) for image in photos.values()])  # (3, 3, 224, 224)
    with torch.no_grad():
        expected = reference_forward(weights, x)
        got = imagenet_googlenet.model.eval()(x)
    assert got.shape == (3, 1000)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_dog_is_a_dalmatian_with_the_reference_notebooks_top5(imagenet_googlenet, photos):
    with torch.no_grad():
        probs = imagenet_googlenet.model.eval()(notebook_input(photos["dog"])).softmax(-1)[0]
    top = probs.topk(5)
    names = [tlm.imagenet_label(int(i)) for i in top.indices]
    assert float(top.values[0]) > 0.999
    assert [name.split(",")[0] for name in names] == NOTEBOOK_TOP5


def test_the_backbones_own_preprocessing_recognises_photos(imagenet_googlenet, photos):
    """Through make_transform (the project's path): dalmatian, a cat class for chelsea, espresso for coffee."""
    first = {name: tlm.imagenet_top_k(imagenet_googlenet, image, k=1)[0][0] for name, image in photos.items()}
    assert first["dog"].startswith("dalmatian")
    assert first["chelsea"].split(",")[0] in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert first["coffee"].startswith("espresso")


def test_preprocessing_is_googles_0_to_255_minus_117(imagenet_googlenet):
    config = imagenet_googlenet.data_config
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 1.0
    tf = tlm.make_transform(imagenet_googlenet)
    image = Image.fromarray(np.full((300, 400, 3), (0, 117, 255), np.uint8))
    x = tf(image)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 100, 100], torch.tensor([-117.0, 0.0, 138.0]), rtol=0, atol=1e-3)


def test_stages_are_the_papers_blocks_and_every_cut_is_exact():
    backbone = tlm.load_backbone("googlenet", num_classes=4, pretrained=False, aux_logits=True)
    assert backbone.stages[0] == "conv1" and backbone.stages[-1] == "inception5b" and len(backbone.stages) == 11
    assert backbone.extra_heads == ["aux1", "aux2"] and backbone.num_features == 1024
    model = backbone.model.eval()
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(x)
        for cut in backbone.stages:
            trunk, top = frozen.split_model(backbone, cut)
            torch.testing.assert_close(top.eval()(trunk(x)), whole, rtol=0, atol=1e-5)
    dropouts = [m for _, m in frozen.layer_sequence(backbone) if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.4  # the paper's dropout, not a second one


def test_aux_heads_in_training_and_which_weights_are_new():
    backbone = tlm.load_backbone("googlenet", num_classes=3, aux_logits=True)
    published = tlgn.load_weights()
    assert torch.equal(backbone.model.aux1.conv[0].weight, published["aux1.conv.0.weight"])  # the 1x1 conv: Google's
    assert backbone.model.aux1.fc1.weight.shape == (1024, 2048) and "aux1.fc1.weight" not in published  # fresh
    backbone.model.train()
    out = backbone.model(torch.zeros(2, 3, 224, 224))
    assert [t.shape for t in (out.logits, out.aux_logits1, out.aux_logits2)] == [(2, 3)] * 3
    backbone.model.eval()
    assert backbone.model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)


def test_grad_cam_looks_at_the_whole_last_inception_block(imagenet_googlenet, photos):
    model = imagenet_googlenet.model
    layer = explain.last_stage(model)
    assert layer is model.inception5b
    x = tlm.make_transform(imagenet_googlenet)(photos["dog"]).unsqueeze(0)
    cam, target = explain.grad_cam(model, layer, x)
    assert cam.shape == (7, 7) and tlm.imagenet_label(target).startswith("dalmatian") and cam.max() == 1.0


def test_a_changed_weights_file_is_refused_and_a_missing_one_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_LIB_DATA_DIR", str(tmp_path))
    with pytest.raises(tlm.WeightsUnavailableError, match=r"(?s)googlenet_inception_v1\.safetensors.*git checkout"):
        tlm.load_backbone("googlenet")
    target = tlgn.weights_path()
    target.parent.mkdir(parents=True)
    data = bytearray((WEIGHTS_DIR / tlgn.WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1  # one bit of one weight
    target.write_bytes(bytes(data))
    with pytest.raises(tlm.WeightsUnavailableError, match="not the file this version expects"):
        tlm.load_backbone("googlenet")
    assert tlm.load_backbone("googlenet", pretrained=False).weights == "random initialisation"  # needs no file


def test_finetune_top_on_cached_activations_then_save_predict_and_onnx(clothing, tmp_path):
    """The CPU recipe end to end on the reference network: cached trunk, top training, saved model, ONNX == PyTorch."""
    import onnxruntime as ort

    from tutorial_lib.export import export_onnx, load_model, save_model

    pick = np.random.default_rng(0)
    splits = {name: split.subset(np.sort(pick.choice(len(split), n, replace=False)))
              for name, split, n in (("train", clothing.train, 24), ("val", clothing.val, 8), ("test", clothing.test, 8))}
    classes = list(clothing.classes)
    backbone = tlm.load_backbone("googlenet", num_classes=len(classes))
    tf = tlm.make_transform(backbone, input_size=(3, 96, 96))
    config = tl.train.TrainConfig(epochs=2, batch_size=8, seed=0, precision="float32")
    trunk = frozen.FrozenTrunk(backbone, "inception5a", tf, torch.device("cpu"), cache_dir=tmp_path / "cache",
                               precision="auto")
    start = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = tl.train.finetune_top(trunk, splits, config, n_classes=len(classes), progress=False,
                                   checkpoint=tmp_path / "top.pt")
    assert result.probs["test"].shape == (len(splits["test"]), len(classes))
    assert list((tmp_path / "cache").glob("*")), "trunk activations are cached on disk"
    trained = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    backbone.model.load_state_dict(start)  # a fresh start resumes the finished run from its checkpoint
    again = tl.train.finetune_top(trunk, splits, config, n_classes=len(classes), progress=False,
                                  checkpoint=tmp_path / "top.pt")
    np.testing.assert_allclose(again.probs["test"], result.probs["test"], atol=1e-6)
    assert all(torch.equal(trained[k], v) for k, v in backbone.model.state_dict().items())
    folder = save_model(backbone, tmp_path / "model", classes=classes, image_size=96)
    loaded = load_model(folder)
    x = torch.stack([tf(splits["test"].image(i)) for i in range(3)])
    with torch.no_grad():
        expected = backbone.model.eval()(x).softmax(1).numpy()
    np.testing.assert_allclose(loaded.predict_proba(x), expected, atol=1e-5)
    onnx_path = export_onnx(folder, tmp_path / "g.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_the_tagging_encoder_is_googlenets_top():
    from tutorial_lib.tagging import TopEncoder

    backbone = tlm.load_backbone("googlenet", pretrained=False)
    trunk, _ = frozen.split_model(backbone, "inception5a")
    with torch.no_grad():
        acts = trunk(torch.randn(2, 3, 160, 160))  # (2, 832, 5, 5)
        embedding = TopEncoder(backbone, "inception5a")(acts)
        expected = backbone.model.eval().flatten(backbone.model.avgpool(
            backbone.model.inception5b(backbone.model.inception5a(acts))))
    assert embedding.shape == (2, 1024)
    torch.testing.assert_close(embedding, expected)


@pytest.mark.skipif(not (SHARED / "dump").is_dir(), reason="Google's HDF5 files (../shared/weights) are not here")
def test_the_carried_file_is_a_fresh_conversion_of_googles_files():
    pytest.importorskip("h5py")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_googlenet.py"), "--check",
                           "--source", str(SHARED)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the same as a fresh conversion" in done.stdout
    for name in ("LICENSE", "dog.jpg"):
        assert (WEIGHTS_DIR / name).read_bytes() == (SHARED / name).read_bytes()


def test_licence_and_attribution_travel_with_the_weights():
    readme = (WEIGHTS_DIR / "README.md").read_text()
    assert "Szegedy" in readme and "Apache" in readme and tlgn.WEIGHTS_SHA256 in readme
    assert "Apache License" in (WEIGHTS_DIR / "LICENSE").read_text()


def test_the_fast_layers_compute_what_the_standard_ones_do():
    """LRN as a banded 1x1 convolution equals nn.LocalResponseNorm; pooling without a padded copy equals timm's."""
    from timm.layers.pool2d_same import MaxPool2dSame

    x = torch.randn(2, 64, 9, 10, generator=torch.Generator().manual_seed(0)) * 5
    standard = torch.nn.LocalResponseNorm(11, alpha=0.00109999999404, beta=0.5, k=2.0)
    torch.testing.assert_close(tlgn.LocalResponseNorm(64)(x), standard(x), rtol=1e-5, atol=1e-6)
    for height, width in ((112, 112), (14, 14), (4, 6), (2, 2), (7, 7), (13, 14)):
        y = torch.randn(1, 3, height, width)
        assert torch.equal(tlgn.MaxPool3x3Same()(y), MaxPool2dSame(3, 2)(y)), (height, width)
