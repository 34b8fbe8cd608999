"""A pretrained network cut in two: a frozen trunk whose activations are computed once, and a top that trains.

Introduced in notebooks 03-05. :func:`split_model` cuts the network before a stage;
:class:`FrozenTrunk` runs every image through the frozen part once per view, caches the
activations on disk, and gives the pretrained pooled features for a linear probe.
:func:`tutorial_lib.train.finetune_top` and the taggers then train the top on those
activations, so many epochs cost seconds on a CPU.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._io import cache_file, cached_array, fingerprint
from .data import ImageDataset, ImageSplit
from .env import autocast, resolve_precision, seed_worker
from .models import TORCHVISION_GOOGLENET_LAYERS, Backbone
from .preprocess import View

# --------------------------------------------------------------------------- cutting a network in two


class _GoogLeNetInput(nn.Module):
    """torchvision GoogLeNet's ``transform_input`` step as a module (ImageNet-normalised input -> its own scaling)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = [model]  # a list, so the parameters are not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model[0]._transform_input(x)


def layer_sequence(backbone: Backbone, head_dropout: float = 0.2) -> list[tuple[str, nn.Module]]:
    """The network as an ordered list of ``(name, module)`` whose composition is its forward pass.

    Stage containers (``blocks``) are opened up so any stage can be a cut point; side heads used
    only in training (``backbone.extra_heads``) are left out. A network with a dropout of its own
    just before the head (GoogLeNet's) keeps it; others get ``head_dropout`` there.
    The list shares modules with ``backbone.model``: training one trains the other.
    """
    model = backbone.model
    if backbone.name == "torchvision_googlenet":
        layers = [("transform_input", _GoogLeNetInput(model))]
        layers += [(name, getattr(model, name)) for name in TORCHVISION_GOOGLENET_LAYERS]
        return layers + [("flatten", nn.Flatten(1)), ("dropout", model.dropout), ("fc", model.fc)]
    layers: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name in backbone.extra_heads:
            continue
        if name == backbone.head and not (layers and isinstance(layers[-1][1], nn.Dropout)):
            layers.append(("head_dropout", nn.Dropout(head_dropout)))
        if isinstance(child, nn.Sequential) and any(s.startswith(f"{name}.") for s in backbone.stages):
            layers += [(f"{name}.{i}", block) for i, block in enumerate(child)]
        else:
            layers.append((name, child))
    return layers


def split_model(backbone: Backbone, first_trainable: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut the network before ``first_trainable``: a frozen trunk and a trainable top.

    ``top(trunk(x))`` equals the whole network's output in eval mode.
    """
    layers = layer_sequence(backbone)
    names = [name for name, _ in layers]
    if first_trainable not in names:
        raise ValueError(f"{first_trainable!r} is not a stage of {backbone.name}; stages: {backbone.stages}")
    cut = names.index(first_trainable)
    trunk = nn.Sequential(*[m for _, m in layers[:cut]])
    top = nn.Sequential(*[m for _, m in layers[cut:]])
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk.eval(), top


def cut_before_last(backbone: Backbone, n: int) -> str:
    """The stage to cut the network before so that its last ``n`` stages train: the first of them."""
    if not 1 <= n <= len(backbone.stages):
        raise ValueError(f"n must be between 1 and {len(backbone.stages)} for {backbone.name}")
    return backbone.stages[-n]


# --------------------------------------------------------------------------- activations of a frozen trunk


@torch.no_grad()
def compute_activations(module: nn.Module, split: ImageSplit, transform: Callable, device: torch.device, *,
                        batch_size: int = 64, num_workers: int = 0, desc: str = "activations",
                        dtype: torch.dtype = torch.float32, precision: str = "float32") -> np.ndarray:
    """Run every image of ``split`` through ``module`` (in eval mode) and return the outputs as an array.

    ``precision="bfloat16"`` runs the module under autocast (matrix products in bfloat16, results
    returned as ``dtype``); ``"float32"`` runs it as it is.
    """
    from .progress import tqdm

    module = module.to(device).eval()
    loader = DataLoader(ImageDataset(split, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, worker_init_fn=seed_worker)
    precision = resolve_precision(precision, device)
    outputs, start = None, 0  # filled batch by batch: no list of batches and no second copy from concatenating them
    for x, _ in tqdm(loader, desc=desc, leave=False):
        with autocast(device, precision):
            y = module(x.to(device)).to(dtype).cpu()
        if outputs is None:
            outputs = torch.empty((len(split), *y.shape[1:]), dtype=dtype)
        outputs[start:start + len(y)] = y
        start += len(y)
    if outputs is None:
        raise ValueError("compute_activations got an empty split: there is nothing to run through the network.")
    return outputs.numpy()


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the Conv2d registered just before it, in place, for inference in eval mode.

    The convolution's weights and bias absorb the normalisation (``torch.nn.utils.fusion``);
    the batch norm is replaced by what it applied after normalising (timm's ``BatchNormAct2d``
    keeps its dropout and activation), or by an identity. It relies on children being registered
    in the order they run, so check the result against the original (:func:`folded_copy` does).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    names = list(module._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = module._modules[first], module._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                and conv.out_channels == bn.num_features:
            module._modules[first] = fuse_conv_bn_eval(conv.eval(), bn.eval())
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            module._modules[second] = nn.Sequential(*after) if after else nn.Identity()
    for child in module.children():
        fold_batchnorm(child)
    return module


@torch.no_grad()
def folded_copy(trunk: nn.Module, input_size: int = 96) -> nn.Module:
    """A copy of ``trunk`` with its batch norms folded, if it computes what ``trunk`` computes; else ``trunk``.

    A batch norm is a pass over memory that the convolution before it can do for free
    (benchmarks/README.md has the figures).
    """
    parameters = list(trunk.parameters())
    if not parameters:  # cut before the first stage (everything trained): nothing to fold
        return trunk
    folded = fold_batchnorm(copy.deepcopy(trunk).eval())
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    device = parameters[0].device
    expected, got = trunk.eval()(x.to(device)), folded(x.to(device))
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape or \
            not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()) + 1e-6):
        return trunk
    return folded


class FrozenTrunk:
    """The frozen lower part of a backbone, cut before stage ``cut``, with cached activations.

    Every image goes through the trunk once (per view); :meth:`pooled` then gives the
    pretrained network's pooled features for a linear probe, and :func:`finetune_top`
    trains the upper stages on the same cached activations.
    """

    def __init__(self, backbone: Backbone, cut: str, transform: Callable, device: torch.device, *,
                 cache_dir: Path | None = None, batch_size: int = 64, num_workers: int = 0,
                 precision: str = "auto") -> None:
        self.backbone, self.cut, self.transform, self.device = backbone, cut, transform, device
        self.cache_dir, self.batch_size, self.num_workers = cache_dir, batch_size, num_workers
        # bfloat16 where the hardware has it (faster, the same accuracy: benchmarks/README.md). The cache stores
        # float16 either way; the precision is part of the cache key.
        self.precision = resolve_precision(precision, device)
        self.trunk, top = split_model(backbone, cut)
        self.trunk = folded_copy(self.trunk)  # a copy: the backbone keeps its batch norms for fine-tuning
        if device.type == "cpu":
            # channels-last convolutions are faster on a CPU (benchmarks/README.md)
            self.trunk.to(memory_format=torch.channels_last)
        # the pretrained top without dropout and head: activations -> pooled features
        self._pool = nn.Sequential(*[m for m in list(top)[:-1] if not isinstance(m, nn.Dropout)])
        self._pool_state = {k: v.detach().clone() for k, v in self._pool.state_dict().items()}
        # every array computed or read once stays in memory: a second call (finetune_top after the notebook's own)
        # returns the same array instead of a second copy of the training set's activations
        self._in_memory: dict[str, np.ndarray] = {}

    def activations(self, split: ImageSplit, view: str = "identity") -> np.ndarray:
        """Trunk outputs for every image of ``split`` seen in ``view`` (float16, cached on disk and in memory).

        The same split and view give the same array object: treat it as read-only."""
        from torchvision import transforms

        pipeline = self.transform if view == "identity" else transforms.Compose([View(view), self.transform])
        key = {"backbone": self.backbone.name, "weights": self.backbone.weights, "cut": self.cut,
               "transform": repr(self.transform), "view": view, "data": fingerprint(split.images, split.labels),
               "precision": self.precision}
        path = cache_file(self.cache_dir or ".", key)  # its name is the key's hash, also the in-memory key
        if path.stem not in self._in_memory:
            self._in_memory[path.stem] = cached_array(path if self.cache_dir else None, lambda: compute_activations(
                self.trunk, split, pipeline, self.device, batch_size=self.batch_size, num_workers=self.num_workers,
                desc=f"{self.backbone.name} up to {self.cut} ({view}, {self.precision})", dtype=torch.float16,
                precision=self.precision))
        return self._in_memory[path.stem]

    @torch.no_grad()
    def pooled(self, activations: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The pretrained network's pooled features ``(N, num_features)`` computed from cached activations."""
        pool = self._pool.to(self.device)
        current = {k: v.detach().clone() for k, v in pool.state_dict().items()}
        pool.load_state_dict(self._pool_state)  # always the pretrained weights, even after fine-tuning
        pool.eval()
        try:
            out = [pool(torch.from_numpy(activations[i:i + batch_size]).float().to(self.device)).flatten(1).cpu()
                   for i in range(0, len(activations), batch_size)]
        finally:
            pool.load_state_dict(current)
        return torch.cat(out).numpy()
