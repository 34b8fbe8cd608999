"""Google's reference GoogLeNet (Inception v1): the network of the talk, written out in plain PyTorch.

Introduced in ``00_setup``. Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, Table 1.
This is the 2014 network with the ImageNet weights Google published beside the paper, not
torchvision's later re-implementation: no batch norm, local response normalisation after the first
two convolution blocks, a bias on every convolution, true 5x5 convolutions, 204 channels in
inception 4a's 3x3 branch, and a 1008-way classifier (index 0 and 1001-1007 never used) that
``tools/convert_googlenet.py`` mapped onto the usual 1,000 ImageNet classes when it converted the weights.

The weights ship with the project in ``data/weights/googlenet-inception-v1/`` (converted once by
``tools/convert_googlenet.py``; licence and attribution beside them) and are checked against
:data:`WEIGHTS_SHA256` every time they are loaded. The network expects RGB 224x224 input on a
0-255 scale minus 117 (:data:`DATA_CONFIG` says so in torchvision's mean/std terms).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn
from torchvision.models.googlenet import GoogLeNetOutputs

#: The preprocessing Google trained with: a centre square resized to 224, pixels 0-255 minus 117, one mean for
#: all channels and no scaling. On torchvision's 0-1 tensors that is mean 117/255 and std 1/255.
DATA_CONFIG: dict[str, Any] = {"input_size": (3, 224, 224), "interpolation": "bilinear",
                               "mean": (117 / 255,) * 3, "std": (1 / 255,) * 3, "crop_pct": 1.0,
                               "crop_mode": "center"}

#: The paper's blocks from input to output: the points where the network can be cut for fine-tuning.
STAGES = ["conv1", "conv2", "inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
          "inception4d", "inception4e", "inception5a", "inception5b"]

WEIGHTS_FILE = "googlenet_inception_v1.safetensors"
#: SHA-256 of the converted weights file; a file with any other content is refused.
WEIGHTS_SHA256 = "74034c4c25a9956247ee2c59c4c51b55b71fa979a6ab325721fac526327fd1fa"

# The inception blocks of Table 1: input channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
# One difference from the printed table: in Google's released weights inception 4a has 204 3x3 channels, not 208.
INCEPTION_BLOCKS = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 204, 16, 48, 64),
    "inception4b": (508, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 48, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


def conv_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A convolution with a bias and Google's "same" padding, then ReLU: the network's one kind of layer.

    "Same" padding keeps ``ceil(size / stride)`` outputs. With stride 1 it pads the same on both
    sides (``padding=kernel_size // 2``); with stride 2 on an even size it pads one more at the
    bottom and right than at the top and left (timm's ``Conv2dSame``).
    """
    conv = Conv2dSame(in_channels, out_channels, kernel_size, stride) if stride > 1 else \
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class MaxPool3x3Same(MaxPool2dSame):
    """3x3 max pooling with stride 2 and "same" padding: ``ceil(size / 2)`` outputs, one more padded row and column
    at the bottom and right than at the top and left (timm's ``MaxPool2dSame``, which pads with -inf).

    On even sizes (all of them for inputs that are multiples of 32 px) no padded copy is needed: the last
    window simply runs past the edge (``ceil_mode``), which gives the same maxima.
    """

    def __init__(self) -> None:
        super().__init__(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % 2 == 0 and width % 2 == 0 and min(height, width) >= 4:
            return nn.functional.max_pool2d(x, 3, 2, 0, ceil_mode=True)
        return super().forward(x)


def max_pool(stride: int) -> nn.MaxPool2d:
    """3x3 max pooling with "same" padding (the padding never wins)."""
    return MaxPool3x3Same() if stride > 1 else nn.MaxPool2d(3, stride=1, padding=1)


class LocalResponseNorm(nn.Module):
    """Divide each activation by its neighbours' energy across channels: ``x / (k + alpha/size * sum x^2) ^ beta``.

    The sum runs over ``size`` neighbouring channels (the paper's "local response normalisation", from
    AlexNet). It computes what ``nn.LocalResponseNorm`` computes; the sum is a 1x1 convolution with a
    band of ones, which a CPU runs several times faster than the built-in's pooling over channels.
    """

    def __init__(self, channels: int, size: int = 11, alpha: float = 0.00109999999404, beta: float = 0.5,
                 k: float = 2.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        offset = torch.arange(channels)[:, None] - torch.arange(channels)[None, :]
        band = ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).float()  # (channels, channels)
        self.register_buffer("band", band[:, :, None, None], persistent=False)  # a 1x1 convolution's weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = nn.functional.conv2d(x * x, self.band.to(x.dtype))  # (batch, channels, H, W)
        return x * (self.k + self.alpha / self.size * energy).pow(-self.beta)


class Inception(nn.Module):
    """Four branches side by side, concatenated along the channels (the paper's Figure 2b)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3_reduce: int, ch3x3: int, ch5x5_reduce: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = conv_relu(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_relu(in_channels, ch3x3_reduce, 1), conv_relu(ch3x3_reduce, ch3x3, 3))
        self.branch3 = nn.Sequential(conv_relu(in_channels, ch5x5_reduce, 1), conv_relu(ch5x5_reduce, ch5x5, 5))
        self.branch4 = nn.Sequential(max_pool(1), conv_relu(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)  # (batch, out_channels, H, W)


class AuxiliaryClassifier(nn.Module):
    """A side classifier used only while training (the paper's Section 5): average pool, 1x1 conv, two linear layers.

    Google's release has the 1x1 convolution's weights; the 1024-unit linear layer's are not in the
    published files, so that layer and the classifier after it start from fresh weights.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)  # 5x5 / stride 3 on the 14x14 maps of a 224 input
        self.conv = conv_relu(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x)).flatten(1)  # (batch, 2048)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """Inception v1 as Google released it. Children are registered in the order the forward pass runs them.

    ``aux_logits=True`` adds the two auxiliary classifiers after inception 4a and 4d; in training mode
    the forward pass then returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` like torchvision's.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.4) -> None:
        super().__init__()
        self.conv1 = conv_relu(3, 64, 7, stride=2)  # (64, 112, 112)
        self.pool1 = max_pool(2)  # (64, 56, 56)
        self.norm1 = LocalResponseNorm(64)
        self.conv2 = nn.Sequential(conv_relu(64, 64, 1), conv_relu(64, 192, 3))  # (192, 56, 56)
        self.norm2 = LocalResponseNorm(192)
        self.pool2 = max_pool(2)  # (192, 28, 28)
        self.inception3a = Inception(*INCEPTION_BLOCKS["inception3a"])  # (256, 28, 28)
        self.inception3b = Inception(*INCEPTION_BLOCKS["inception3b"])  # (480, 28, 28)
        self.pool3 = max_pool(2)  # (480, 14, 14)
        self.inception4a = Inception(*INCEPTION_BLOCKS["inception4a"])  # (508, 14, 14)
        self.inception4b = Inception(*INCEPTION_BLOCKS["inception4b"])  # (512, 14, 14)
        self.inception4c = Inception(*INCEPTION_BLOCKS["inception4c"])  # (512, 14, 14)
        self.inception4d = Inception(*INCEPTION_BLOCKS["inception4d"])  # (528, 14, 14)
        self.inception4e = Inception(*INCEPTION_BLOCKS["inception4e"])  # (832, 14, 14)
        self.pool4 = max_pool(2)  # (832, 7, 7)
        self.inception5a = Inception(*INCEPTION_BLOCKS["inception5a"])  # (832, 7, 7)
        self.inception5b = Inception(*INCEPTION_BLOCKS["inception5b"])  # (1024, 7, 7)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # (1024, 1, 1)
        self.flatten = nn.Flatten(1)  # (1024,)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.aux1 = AuxiliaryClassifier(508, num_classes) if aux_logits else None
        self.aux2 = AuxiliaryClassifier(528, num_classes) if aux_logits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        aux = []
        for name, layer in self.named_children():
            if name in ("aux1", "aux2"):
                continue
            x = layer(x)
            if self.training and self.aux1 is not None and name in ("inception4a", "inception4d"):
                aux.append((self.aux1 if name == "inception4a" else self.aux2)(x))
        if aux:
            return GoogLeNetOutputs(x, aux[1], aux[0])
        return x  # (batch, num_classes)


# --------------------------------------------------------------------------- the weights that ship with the project


def weights_path() -> Path:
    """Where the converted weights live: ``data/weights/googlenet-inception-v1/`` (``TUTORIAL_LIB_DATA_DIR`` moves it)."""
    from .data.registry import embedded_data_dir

    return embedded_data_dir() / "weights" / "googlenet-inception-v1" / WEIGHTS_FILE


class WeightsFileError(OSError):
    """The weights file is missing or is not the one this version expects; the message says how to restore it."""


def load_weights(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet weights as a state dict, after checking the file's SHA-256; any other file is refused."""
    from safetensors.torch import load_file

    from ._io import file_sha256

    path = Path(path or weights_path())
    fix = ("Fix: restore it from the repository (git checkout -- data/weights), or, with Google's HDF5 files "
           "at hand, run: python tools/convert_googlenet.py --source FOLDER")
    if not path.is_file():
        raise WeightsFileError(f"GoogLeNet's ImageNet weights are not at {path}.\n  {fix}")
    digest = file_sha256(path)
    if digest != WEIGHTS_SHA256:
        raise WeightsFileError(f"{path} is not the file this version expects (SHA-256 {digest[:16]}..., "
                               f"expected {WEIGHTS_SHA256[:16]}...): damaged or replaced.\n  {fix}")
    return load_file(str(path))


def build_googlenet(num_classes: int | None = None, *, pretrained: bool = True, aux_logits: bool = False,
                    path: Path | None = None) -> GoogLeNet:
    """The reference GoogLeNet with Google's ImageNet weights (``pretrained``) and its 1,000-class head.

    ``num_classes=k`` replaces the head with a new one of ``k`` outputs. With ``aux_logits`` the
    auxiliary classifiers get their published 1x1 convolutions and fresh linear layers.
    """
    model = GoogLeNet(num_classes=1000, aux_logits=aux_logits)
    if pretrained:
        state = load_weights(path)
        if not aux_logits:
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        result = model.load_state_dict(state, strict=False)
        expected_missing = {k for k in model.state_dict() if k.startswith(("aux1.fc", "aux2.fc"))}
        if set(result.missing_keys) != expected_missing or result.unexpected_keys:
            raise ValueError(f"The weights file does not fit the network: missing {result.missing_keys}, "
                             f"unexpected {result.unexpected_keys}.")
    if num_classes is not None:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        if aux_logits:
            model.aux1.fc2 = nn.Linear(1024, num_classes)
            model.aux2.fc2 = nn.Linear(1024, num_classes)
    return model
