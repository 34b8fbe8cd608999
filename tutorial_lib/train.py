"""Transfer-learning strategies and the training loop behind notebooks 03-05.

Three strategies, the same functions for every backbone:

- ``linear_probe``: the pretrained network is frozen; its pooled features are
  extracted once (cached on disk) and a linear classifier is fitted on them.
- ``finetune_top``: the last stages and a new head are trained, the rest frozen.
  The frozen trunk's activations are computed once (for the image and its mirror
  image) and re-used every epoch, so many epochs cost seconds on a CPU.
- ``finetune_full``: everything is trained end to end on augmented images, with a
  lower learning rate for the pretrained layers than for the head, warm-up then
  cosine decay, and a class-balanced loss.

Training returns a history table; plotting lives in :mod:`tutorial_lib.plots`.
Checkpoints are written atomically each epoch, and a resumed run ends with the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pickle
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from .data import ImageDataset, ImageSplit
from ._io import atomic_save, cache_file, cached_array, fingerprint
from .env import explains_out_of_memory, make_generator, seed_everything, seed_worker
from .models import Backbone

# --------------------------------------------------------------------------- run profiles


@dataclass(frozen=True)
class Profile:
    """How much work a run does. Chosen by the notebooks' ``PROFILE`` parameter."""

    name: str
    image_size: int  # input side in pixels fed to the backbone
    top_epochs: int  # epochs of finetune_top on cached activations
    full_epochs: int  # epochs of finetune_full end to end (0 skips it)
    full_train_images: int | None  # cap on images per epoch for finetune_full (None: all)
    batch_size: int  # images per batch of the frozen trunk's one pass over the data
    amp: bool  # mixed precision end to end (CUDA only; the cached-activation training picks its own, see finetune_top)
    channels_last: bool
    max_images: int | None = None  # cap on every split (quick smoke runs)


PROFILES = {
    # CI-size smoke run: every code path, tiny numbers.
    "quick": Profile("quick", 96, 3, 1, 64, 32, amp=False, channels_last=False, max_images=120),
    # A laptop CPU in a few minutes: cached-activation training does most of the work.
    # No finetune_full: on 2 CPU cores one end-to-end epoch at 224 px takes minutes and >2 GB (measured),
    # and a token epoch only disturbed the pretrained BatchNorm statistics (test accuracy fell 0.90 -> 0.84).
    # Batches of 16 for the trunk's pass: at 128 it peaked at 3.1 GB (Lite0's 112 px feature maps), at 16 1.1 GB.
    "default": Profile("default", 224, 8, 0, None, 16, amp=False, channels_last=False),
    # A GPU: end-to-end fine-tuning at 224 px with mixed precision and a large batch.
    "full": Profile("full", 224, 20, 12, None, 128, amp=True, channels_last=True),
}


def get_profile(name: str, device: torch.device) -> Profile:
    """Return the named profile; ``"auto"`` is ``"full"`` on a CUDA GPU, else ``"default"``."""
    if name == "auto":
        name = "full" if device.type == "cuda" else "default"
    if name not in PROFILES:
        raise ValueError(f"Unknown PROFILE {name!r}; use one of {', '.join(PROFILES)} or 'auto'.")
    profile = PROFILES[name]
    if device.type != "cuda" and profile.amp:
        profile = replace(profile, amp=False)  # end to end on a CPU: not measured faster in bf16, so float32
    return profile


def limit_split(split: ImageSplit, max_images: int | None, seed: int) -> ImageSplit:
    """A stratified random sample of at most ``max_images`` images (the whole split if ``None``)."""
    if max_images is None or len(split) <= max_images:
        return split
    from sklearn.model_selection import train_test_split

    counts = np.bincount(split.labels)
    if max_images < 1:
        raise ValueError(f"max_images (--max-images) must be at least 1, got {max_images}.")
    stratify = split.labels if counts[counts > 0].min() >= 2 and max_images >= (counts > 0).sum() else None
    keep, _ = train_test_split(np.arange(len(split)), train_size=max_images, random_state=seed, stratify=stratify)
    return split.subset(np.sort(keep))


# --------------------------------------------------------------------------- cutting a network in two


class _GoogLeNetInput(nn.Module):
    """GoogLeNet's ``transform_input`` step as a module (ImageNet-normalised input -> its own scaling)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = [model]  # a list, so the parameters are not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model[0]._transform_input(x)


_GOOGLENET_ORDER = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                    "inception5a", "inception5b", "avgpool"]


def layer_sequence(backbone: Backbone, head_dropout: float = 0.2) -> list[tuple[str, nn.Module]]:
    """The network as an ordered list of ``(name, module)`` whose composition is its forward pass.

    Stage containers (``blocks``) are opened up so any stage can be a cut point.
    The list shares modules with ``backbone.model``: training one trains the other.
    """
    model = backbone.model
    if backbone.name == "googlenet":
        layers = [("transform_input", _GoogLeNetInput(model))]
        layers += [(name, getattr(model, name)) for name in _GOOGLENET_ORDER]
        return layers + [("flatten", nn.Flatten(1)), ("dropout", model.dropout), ("fc", model.fc)]
    layers = []
    for name, child in model.named_children():
        if name == backbone.head:
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


def top_stages(backbone: Backbone, n: int) -> str:
    """The first of the last ``n`` stages: where ``finetune_top`` starts training."""
    if not 1 <= n <= len(backbone.stages):
        raise ValueError(f"n must be between 1 and {len(backbone.stages)} for {backbone.name}")
    return backbone.stages[-n]


# --------------------------------------------------------------------------- activations of a frozen trunk


VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")
"""Deterministic views of an image (the 8 symmetries of a square). A mirrored clothing photo is still a
valid photo (``identity``, ``hflip``); a fundus photo has no "up", so all 8 are valid views of a retina."""


class View:
    """One deterministic view of a PIL image (see :data:`VIEWS`): a picklable transform."""

    def __init__(self, name: str) -> None:
        if name not in VIEWS:
            raise ValueError(f"Unknown view {name!r}; use one of {VIEWS}.")
        self.name = name

    def __call__(self, image):
        from PIL import Image

        ops = {"hflip": Image.Transpose.FLIP_LEFT_RIGHT, "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
               "rot90": Image.Transpose.ROTATE_90, "rot180": Image.Transpose.ROTATE_180,
               "rot270": Image.Transpose.ROTATE_270, "transpose": Image.Transpose.TRANSPOSE,
               "transverse": Image.Transpose.TRANSVERSE}
        return image if self.name == "identity" else image.transpose(ops[self.name])

    def __repr__(self) -> str:
        return f"View({self.name!r})"


PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if check is not None)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bfloat16"`` where the hardware computes it natively, else ``"float32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def precision_autocast(device: torch.device, precision: str):
    """The autocast context for ``precision``: bfloat16 matrix products for ``"bfloat16"``, none for ``"float32"``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


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
    outputs = []
    for x, _ in tqdm(loader, desc=desc, leave=False):
        with precision_autocast(device, precision):
            y = module(x.to(device))
        outputs.append(y.to(dtype).cpu())
    return torch.cat(outputs).numpy()


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

    Measured on 2 CPU cores, Lite0 up to ``blocks.6`` at 224 px in bfloat16: 161 -> 205 images/s
    (a batch norm is a pass over memory that the convolution before it can do for free).
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
        # bfloat16 where the hardware has it. Measured on the 2-core AVX512-BF16 machine, Lite0 at 224 px, batches
        # of 16: 63 -> 140 images/s; clothing test accuracy of the linear probe 0.882 -> 0.884, finetune_top 0.901
        # both ways. The cache stores float16 either way; the precision is part of the cache key.
        self.precision = resolve_precision(precision, device)
        self.trunk, top = split_model(backbone, cut)
        self.trunk = folded_copy(self.trunk)  # a copy: the backbone keeps its batch norms for fine-tuning
        if device.type == "cpu":
            # measured on 2 cores, Lite0 at 224 px, 384 photos in batches of 16: 8.9 s channels-last, 12.6 s without
            self.trunk.to(memory_format=torch.channels_last)
        # the pretrained top without dropout and head: activations -> pooled features
        self._pool = nn.Sequential(*[m for m in list(top)[:-1] if not isinstance(m, nn.Dropout)])
        self._pool_state = {k: v.detach().clone() for k, v in self._pool.state_dict().items()}

    def activations(self, split: ImageSplit, view: str = "identity") -> np.ndarray:
        """Trunk outputs for every image of ``split`` seen in ``view`` (float16, cached on disk)."""
        from torchvision import transforms

        pipeline = self.transform if view == "identity" else transforms.Compose([View(view), self.transform])
        key = {"backbone": self.backbone.name, "weights": self.backbone.weights, "cut": self.cut,
               "transform": repr(self.transform), "view": view, "data": fingerprint(split.images, split.labels),
               "precision": self.precision}
        return cached_array(cache_file(self.cache_dir, key) if self.cache_dir else None, lambda: compute_activations(
            self.trunk, split, pipeline, self.device, batch_size=self.batch_size, num_workers=self.num_workers,
            desc=f"{self.backbone.name} up to {self.cut} ({view}, {self.precision})", dtype=torch.float16,
            precision=self.precision))

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


# --------------------------------------------------------------------------- the training loop


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int
    batch_size: int = 64
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4  # pretrained layers learn slower than the new head
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_balanced: bool = True  # weight the loss by inverse class frequency
    aux_weight: float = 0.3  # GoogLeNet's auxiliary classifiers, when present
    samples_per_epoch: int | None = None  # a random subset per epoch (None: the whole training set)
    num_workers: int = 0
    amp: bool = False
    channels_last: bool = False
    seed: int = 0
    amp_dtype: str = "bfloat16"  # "float16" for GPUs without bfloat16 (adds a GradScaler)
    accumulate_steps: int = 1  # micro-batches per optimizer step; batch_size stays the images per step


def _run_config(config: TrainConfig) -> dict[str, Any]:
    """The settings that identify a run when resuming. Accumulation is left out (it does not change the
    result), and so are newer options at their defaults: checkpoints of earlier versions still resume."""
    settings = asdict(config)
    settings.pop("accumulate_steps")
    if settings["amp_dtype"] == "bfloat16":
        settings.pop("amp_dtype")
    return settings


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to average 1 over the samples."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def param_groups(model: nn.Module, head_prefixes: Sequence[str], lr_head: float, lr_backbone: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: parameters under ``head_prefixes`` get ``lr_head``, the rest ``lr_backbone``.

    Biases and normalisation weights get no weight decay.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = any(name == p or name.startswith(f"{p}.") for p in head_prefixes)
        decay = param.ndim > 1
        groups.setdefault((is_head, decay), []).append(param)
    return [{"params": params, "lr": lr_head if is_head else lr_backbone,
             "weight_decay": weight_decay if decay else 0.0}
            for (is_head, decay), params in groups.items()]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's learning rate, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _logits(output: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits (GoogLeNet in training mode returns a namedtuple)."""
    if isinstance(output, torch.Tensor):
        return output, []
    aux = [t for t in (getattr(output, "aux_logits2", None), getattr(output, "aux_logits1", None)) if t is not None]
    return output.logits, aux


def _autocast(device: torch.device, enabled: bool, dtype: str = "bfloat16"):
    """Mixed precision: ``dtype`` on CUDA; bfloat16 on a CPU (float16 autocast is a GPU feature)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    if enabled and device.type == "cpu" and dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_proba(model: nn.Module, data: Dataset, device: torch.device, *, batch_size: int = 128,
                  num_workers: int = 0, amp: bool = False, channels_last: bool = False) -> np.ndarray:
    """Class probabilities ``(N, n_classes)`` for a dataset of ``(x, y)`` pairs."""
    model = model.to(device).eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=seed_worker)
    probs = []
    for x, _ in loader:
        x = x.to(device)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits, _ = _logits(model(x))
        probs.append(logits.float().softmax(dim=-1).cpu())
    return torch.cat(probs).numpy()


def _rng_state() -> dict[str, Any]:
    """The random state that training consumes: torch (dropout, sampling), Python's ``random`` and NumPy's
    global generator (augmentations such as timm's RandomResizedCrop, in the main process when
    ``num_workers=0``). Kept as plain data and tensors, so ``weights_only`` loading accepts it."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
             "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(
                 np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                 "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:  # checkpoints before Python's and NumPy's states were kept lack them
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({"bit_generator": s["bit_generator"], "has_gauss": s["has_gauss"], "gauss": s["gauss"],
                             "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]}})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely (damaged, or holding more than tensors and plain data)."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` with ``weights_only=True``: loading runs no code from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a text file raises KeyError, half a zip RuntimeError, ...)
        # torch's own message suggests weights_only=False, which would run any code in the file: never relay it
        found = re.search(r"GLOBAL ([\w.]+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if found:
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain data (a {found.group(1)}"
                                  "): it was not loaded, since loading such a file can run code from it. Delete it "
                                  "to start the run afresh.") from err
        detail = "" if "weights_only" in str(err) or "eights only" in str(err) else f": {str(err)[:200]}"
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged, or not saved by torch; "
                              f"{type(err).__name__}{detail}); it was not loaded. Delete it to start the run "
                              "afresh.") from err


EXISTING = ("refuse", "backup", "overwrite")


def _other_run(old_key: str, new_key: str) -> str:
    """The settings in which two run keys differ, e.g. ``lr_head=0.001 (now 0.01)``."""
    old, new = json.loads(old_key), json.loads(new_key)
    flat = lambda key: {**{k: v for k, v in key.items() if k != "config"}, **key.get("config", {})}  # noqa: E731
    old, new = flat(old), flat(new)
    return ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k)) or "other settings"


def read_own_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` for a checkpoint written by :func:`fit`, else ``(None, what the file is)``.

    A folder at ``path`` raises :class:`CheckpointError` (a checkpoint can never be written there)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"The checkpoint path {path} is a folder; give a file name, e.g. {path / 'run.pt'}.")
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        return None, str(err).split(" Delete it")[0].removesuffix("; it was not loaded.")
    if not (isinstance(state, dict) and "run_key" in state and "epoch" in state):
        return None, f"{path} is not a checkpoint written by this library's fit (a state_dict or another file)"
    return state, None


def _resume_state(checkpoint: Path | None, run_key: str, epochs: int, existing: str) -> dict[str, Any] | None:
    """The state to resume from ``checkpoint``, or ``None`` to start afresh.

    This run's checkpoint is resumed, also when ``epochs`` grew (the run continues). Anything
    else at the path (another run's checkpoint, a state_dict, a damaged or unrelated file)
    is, by ``existing``: ``"refuse"``: left untouched, :class:`CheckpointError`;
    ``"backup"``: renamed to ``<name>.bak`` with a warning; ``"overwrite"``: replaced.
    """
    if existing not in EXISTING:
        raise ValueError(f"existing={existing!r}: use one of {EXISTING}.")
    if checkpoint is None or not Path(checkpoint).exists() and not Path(checkpoint).is_symlink():
        return None
    path = Path(checkpoint)
    state, problem = read_own_checkpoint(path)
    if state is not None:
        old, new = json.loads(state["run_key"]), json.loads(run_key)
        old["config"].pop("epochs", None), new["config"].pop("epochs", None)
        done = state["epoch"] + 1
        if old == new and done <= epochs:
            if done < epochs and json.loads(state["run_key"])["config"].get("epochs") != epochs:
                warnings.warn(f"{path.name}: continuing the run from epoch {done} to {epochs} epochs.", stacklevel=4)
            return state
        problem = (f"{path} already holds {done} trained epochs, more than the {epochs} asked for" if old == new
                   else f"{path} is the checkpoint of another run: {_other_run(state['run_key'], run_key)}")
    if existing == "refuse":
        raise CheckpointError(f"{problem}; it was left untouched. To resume it, re-run with the settings it was "
                              "written with; to keep it, pass another checkpoint path; to replace it, pass "
                              "--overwrite (command line) or existing='overwrite' (Python).")
    if existing == "backup":
        keep_aside(path, problem, stacklevel=5)
    return None


def keep_aside(path: Path, problem: str, stacklevel: int = 2) -> Path:
    """Rename ``path`` to ``<name>.bak`` (replacing an older ``.bak``) with a warning that says ``problem``."""
    backup = Path(path).with_name(Path(path).name + ".bak")
    os.replace(path, backup)
    warnings.warn(f"{problem}. Starting afresh; the old file is kept as {backup}.", stacklevel=stacklevel)
    return backup


def dataset_labels(data: Dataset) -> np.ndarray:
    """The integer labels of a dataset of ``(x, y)`` pairs, without decoding any image."""
    if isinstance(data, ImageDataset):
        return np.asarray(data.split.labels)
    if isinstance(data, TensorDataset):
        return data.tensors[1].numpy()
    return np.array([int(data[i][1]) for i in range(len(data))])


@explains_out_of_memory
def fit(model: nn.Module, train_data: Dataset, val_data: Dataset, config: TrainConfig, device: torch.device, *,
        head_prefixes: Sequence[str] = (), n_classes: int, train_labels: np.ndarray | None = None,
        checkpoint: Path | None = None, score: Callable[[np.ndarray, np.ndarray], float] | None = None,
        stop_after_epoch: int | None = None, progress: bool = True, existing: str = "backup") -> pd.DataFrame:
    """Train ``model`` and return its history (one row per epoch).

    ``head_prefixes`` name the new layers (they get ``lr_head``; the rest ``lr_backbone``).
    With ``checkpoint``, the state is saved atomically after every epoch and an existing
    checkpoint is resumed from, so an interrupted run picks up where it stopped and ends
    with the same weights; the same run with more ``epochs`` continues from where it ended.
    A file at ``checkpoint`` that is not this run's checkpoint is handled by ``existing``
    (see :func:`_resume_state`). ``stop_after_epoch`` simulates an interruption (for tests).
    The weights of the epoch with the best validation ``score`` (default: accuracy) are
    loaded back at the end.

    Under ``torchrun`` the same call trains with DDP, and ``config.accumulate_steps``
    splits each step into micro-batches; ``batch_size`` stays the images per optimizer
    step, so the result matches a single-process run (see :mod:`tutorial_lib.distributed`).
    """
    from .progress import tqdm

    from . import distributed

    ctx = distributed.context()  # rank 0 of 1 unless started by torchrun
    seed_everything(config.seed + ctx.rank)  # rank 0 as a single process; DDP gives every rank rank 0's weights
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, head_prefixes, config.lr_head, config.lr_backbone,
                                               config.weight_decay))
    steps_per_epoch = math.ceil((config.samples_per_epoch or len(train_data)) / config.batch_size)
    scheduler = warmup_cosine(optimizer, config.epochs * steps_per_epoch,
                              int(config.warmup_epochs * steps_per_epoch))
    weight = class_weights(train_labels, n_classes).to(device) if config.class_balanced and train_labels is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    plain = not ctx.enabled and config.accumulate_steps == 1  # one process, one batch per step: the simple loop
    distributed.micro_batch_size(config.batch_size, ctx.world_size, config.accumulate_steps)  # checks the split
    item_loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing, reduction="none")
    plan_labels = None if plain or weight is None else (
        np.asarray(train_labels) if train_labels is not None else dataset_labels(train_data))
    scaler = distributed.grad_scaler(device, config.amp, config.amp_dtype)
    score = score or (lambda y, p: float((y == p).mean()))
    history: list[dict[str, Any]] = []
    best = {"score": -math.inf, "state": None}
    start_epoch = 0
    # a checkpoint is resumed only if it belongs to this run: same settings, same data, same model shape
    run_key = json.dumps({"config": _run_config(config), "n_train": len(train_data), "n_val": len(val_data),
                          "train_labels": int(np.asarray(train_labels).sum()) if train_labels is not None else None,
                          "params": sum(p.numel() for p in model.parameters())}, sort_keys=True)
    state = _resume_state(checkpoint, run_key, config.epochs, existing)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        rng = distributed.rank_rng_state(state, ctx)
        if rng is not None:
            _set_rng_state(rng)
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    train_model = distributed.wrap(model, device, ctx)  # DDP under torchrun, else the model itself
    val_labels = dataset_labels(val_data)
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        train_model.train()
        generator = make_generator(config.seed * 10_000 + epoch)  # per epoch: a resumed run sees the same batches
        if plain:
            sampler = RandomSampler(train_data, num_samples=config.samples_per_epoch, generator=generator)
            loader = DataLoader(train_data, batch_size=config.batch_size, sampler=sampler,
                                num_workers=config.num_workers, worker_init_fn=seed_worker, generator=generator,
                                pin_memory=device.type == "cuda")
            steps, n_steps = ([(x, y, None)] for x, y in loader), len(loader)
        else:  # this rank's micro-batches of the same global batches (tutorial_lib.distributed)
            order = distributed.epoch_order(len(train_data), config.samples_per_epoch, generator)
            plan = distributed.plan_epoch(order, config.batch_size, config.accumulate_steps, ctx,
                                          labels=plan_labels, weight=weight)
            loader = DataLoader(train_data, batch_sampler=plan.batch_sampler(), num_workers=config.num_workers,
                                worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                                generator=distributed.rank_generator(config.seed * 10_000 + epoch, ctx))
            steps, n_steps = plan.steps(loader), plan.n_steps
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(steps, total=n_steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (progress and ctx.is_main))
        for group in bar:
            optimizer.zero_grad(set_to_none=True)
            for i, (x, y, micro) in enumerate(group):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if config.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with distributed.sync_gradients(train_model, i == len(group) - 1):
                    with _autocast(device, config.amp, config.amp_dtype):
                        logits, aux = _logits(train_model(x))
                        if micro is None:
                            loss = loss_fn(logits.float(), y)
                            for a in aux:
                                loss = loss + config.aux_weight * loss_fn(a.float(), y)
                        else:  # this micro-batch's share of the global batch's mean loss
                            per_item = item_loss(logits.float(), y)
                            for a in aux:
                                per_item = per_item + config.aux_weight * item_loss(a.float(), y)
                            loss = distributed.micro_loss(per_item, micro)
                    scaler.scale(loss).backward()
                real = len(y) if micro is None else micro.real
                loss_sum += float(loss.detach()) * (len(y) if micro is None else micro.count)
                correct += int((logits[:real].argmax(1) == y[:real]).sum())
                total += real
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        loss_sum, correct, total = distributed.all_reduce_sum([loss_sum, correct, total], ctx, device)
        probs = distributed.gather_predictions(  # sharded over the ranks, gathered on every rank
            lambda data: predict_proba(model, data, device, batch_size=max(config.batch_size, 128),
                                       num_workers=config.num_workers, amp=config.amp,
                                       channels_last=config.channels_last), val_data, ctx)
        val_pred = probs.argmax(1)
        val_score = score(val_labels, val_pred)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / total, "train_accuracy": correct / total,
               "val_accuracy": float((val_pred == val_labels).mean()), "val_score": val_score,
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        history.append(row)
        if val_score > best["score"]:
            best = {"score": val_score, "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        if progress and ctx.is_main:
            print(f"epoch {epoch + 1:>2}/{config.epochs}  loss {row['train_loss']:.3f}  "
                  f"train acc {row['train_accuracy']:.3f}  val acc {row['val_accuracy']:.3f}  "
                  f"val score {val_score:.3f}  ({row['seconds']:.1f} s)")
        if checkpoint is not None:
            rng = distributed.gather_objects(_rng_state(), ctx)  # every rank's random state, for an exact resume
            if ctx.is_main:  # one writer; the others wait until the file is complete
                extra: dict[str, Any] = {"rng_ranks": rng} if ctx.enabled else {}
                if scaler.is_enabled():
                    extra["scaler"] = scaler.state_dict()
                atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "history": history, "best": best,
                             "epoch": epoch, "rng": rng[0], "run_key": run_key, **extra}, Path(checkpoint))
            distributed.barrier(ctx)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if best["state"] is not None and (stop_after_epoch is None or stop_after_epoch >= config.epochs):
        model.load_state_dict(best["state"])
    return pd.DataFrame(history)


# --------------------------------------------------------------------------- the three strategies


@dataclass
class StrategyResult:
    """What a strategy produced: class probabilities per split, the history, and the trained model."""

    name: str
    probs: dict[str, np.ndarray]  # split -> (N, n_classes)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    model: Any = None
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def fit_linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, seed: int = 0,
                     c_grid: Sequence[float] = (0.01, 0.03, 0.1),
                     score: Callable[[np.ndarray, np.ndarray], float] | None = None) -> StrategyResult:
    """Logistic regression on frozen features; ``C`` chosen on the validation split.

    Classes are weighted by inverse frequency; features are standardised. Like the other
    strategies, the model is fitted on the training split only, so its validation score
    stays an honest basis for choosing between strategies.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    score = score or (lambda y, p: float((y == p).mean()))

    def make(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000,
                                                                  random_state=seed))

    models = {c: make(c).fit(features["train"], labels["train"]) for c in c_grid}
    val_scores = {c: score(labels["val"], m.predict(features["val"])) for c, m in models.items()}
    best_c = max(val_scores, key=val_scores.get)
    model = models[best_c]
    probs = {split: model.predict_proba(x) for split, x in features.items()}
    return StrategyResult("linear_probe", probs, model=model, seconds=time.perf_counter() - started,
                          notes={"C": best_c, "val_scores": val_scores, "fit_on": "train"})


def finetune_top(frozen: FrozenTrunk, splits: dict[str, ImageSplit], config: TrainConfig, *, n_classes: int,
                 train_views: Sequence[str] = ("identity", "hflip"), eval_views: Sequence[str] = ("identity",),
                 checkpoint: Path | None = None, score: Callable | None = None,
                 progress: bool = True, precision: str = "auto", existing: str = "backup") -> StrategyResult:
    """Train the stages from ``frozen.cut`` up, and the head, on cached activations of the frozen trunk.

    ``precision="auto"`` trains with bfloat16 mixed precision where the hardware computes
    bfloat16 natively (weights, optimizer and loss stay float32), else in float32; ``config.amp``
    turns mixed precision on regardless.

    The training set holds every image in each of ``train_views`` (free augmentation:
    the activations of each view are cached once). Validation and test probabilities are
    averaged over ``eval_views`` (test-time augmentation). The trained layers are shared
    with ``backbone.model``, so a later :func:`finetune_full` starts from them.
    """
    started = time.perf_counter()
    _, top = split_model(frozen.backbone, frozen.cut)

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x).float(), torch.from_numpy(np.asarray(y, dtype=np.int64)))

    train_x = np.concatenate([frozen.activations(splits["train"], v) for v in train_views])
    train_y = np.tile(splits["train"].labels, len(train_views))
    val_x = frozen.activations(splits["val"])
    head = str(len(top) - 1)  # the classifier is the top's last module
    precision = resolve_precision(precision, frozen.device)
    top_config = replace(config, num_workers=0, channels_last=False, amp=config.amp or precision == "bfloat16")
    history = fit(top, tensors(train_x, train_y), tensors(val_x, splits["val"].labels), top_config,
                  frozen.device, head_prefixes=[head], n_classes=n_classes, train_labels=train_y,
                  checkpoint=checkpoint, score=score, progress=progress, existing=existing)
    probs = {split: np.mean([predict_proba(top, tensors(frozen.activations(data, v), data.labels), frozen.device)
                             for v in (("identity",) if split == "train" else eval_views)], axis=0)
             for split, data in splits.items()}
    return StrategyResult("finetune_top", probs, history, model=top, seconds=time.perf_counter() - started,
                          notes={"trained_from": frozen.cut, "activation_shape": list(val_x.shape[1:]),
                                 "precision": "bfloat16" if top_config.amp else "float32",
                                 "train_views": list(train_views), "eval_views": list(eval_views)})


def finetune_top_ensemble(frozen: FrozenTrunk, splits: dict[str, ImageSplit], config: TrainConfig, *,
                          n_classes: int, seeds: Sequence[int], checkpoint: Path | None = None,
                          progress: bool = True, **kwargs: Any) -> tuple[StrategyResult, list[StrategyResult]]:
    """:func:`finetune_top` once per seed, from the same start, and the mean of their probabilities.

    Every member starts from the weights the top has when this is called (call it before
    training the top), with its head re-initialised from its own seed; the seed also
    sets the order of the batches and the dropout. Returns the ensemble and its members:
    ``members[0]`` is an ordinary single-seed ``finetune_top``. ``checkpoint`` becomes one
    file per member (``<stem>_seed<seed><suffix>``). With ``progress`` the first member
    shows its epochs and the others one bar. Afterwards the backbone holds the weights of
    ``members[0]``. Give the trunk a ``cache_dir``, or every member recomputes the activations.
    """
    from .progress import tqdm

    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. range(10)")
    started = time.perf_counter()
    _, top = split_model(frozen.backbone, frozen.cut)
    start = copy.deepcopy(top.state_dict())
    members: list[StrategyResult] = []
    for i, seed in enumerate(tqdm(seeds, desc="ensemble members", disable=not progress or len(seeds) == 1)):
        top.load_state_dict(start)
        torch.manual_seed(seed)
        for module in top[-1].modules():  # the classifier (the top's last module)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        member_checkpoint = (checkpoint.with_name(f"{checkpoint.stem}_seed{seed}{checkpoint.suffix}")
                             if checkpoint is not None else None)
        member = finetune_top(frozen, splits, replace(config, seed=seed), n_classes=n_classes,
                              checkpoint=member_checkpoint, progress=progress and i == 0, **kwargs)
        member.notes["seed"] = seed
        if i == 0:
            first_weights = copy.deepcopy(top.state_dict())
        else:
            member.model = None  # the shared top now holds another member's weights
        members.append(member)
    top.load_state_dict(first_weights)
    probs = {split: np.mean([m.probs[split] for m in members], axis=0) for split in members[0].probs}
    return StrategyResult("finetune_top_ensemble", probs, members[0].history, model=None,
                          seconds=time.perf_counter() - started,
                          notes={"seeds": seeds, "trained_from": frozen.cut,
                                 "precision": members[0].notes["precision"],
                                 "member_seconds": [round(m.seconds, 1) for m in members]}), members


def finetune_full(backbone: Backbone, splits: dict[str, ImageSplit], train_transform: Callable,
                  eval_transform: Callable, device: torch.device, config: TrainConfig, *,
                  checkpoint: Path | None = None, score: Callable | None = None, progress: bool = True,
                  n_classes: int, existing: str = "backup") -> StrategyResult:
    """Fine-tune the whole network end to end on augmented images.

    The head (and GoogLeNet's auxiliary heads) learn at ``lr_head``, the pretrained
    layers at ``lr_backbone``. Run it after :func:`finetune_top` for staged unfreezing:
    the head is then already trained when the backbone starts to move.
    """
    started = time.perf_counter()
    model = backbone.model
    for p in model.parameters():
        p.requires_grad_(True)
    heads = [backbone.head, *backbone.extra_heads]
    train = ImageDataset(splits["train"], train_transform)
    history = fit(model, train, ImageDataset(splits["val"], eval_transform), config, device, head_prefixes=heads,
                  n_classes=n_classes, train_labels=splits["train"].labels, checkpoint=checkpoint, score=score,
                  progress=progress, existing=existing)
    probs = {split: predict_proba(model, ImageDataset(splits[split], eval_transform), device,
                                  batch_size=max(128, config.batch_size), num_workers=config.num_workers,
                                  amp=config.amp, channels_last=config.channels_last)
             for split in ("val", "test")}  # the training split is not re-scored: it costs a full pass on a CPU
    images_seen = config.epochs * (config.samples_per_epoch or len(splits["train"]))
    return StrategyResult("finetune_full", probs, history, model=model, seconds=time.perf_counter() - started,
                          notes={"epochs": config.epochs, "images_seen": images_seen})


# --------------------------------------------------------------------------- ordinal decisions (DR grades)


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """The mean grade under the predicted distribution: a continuous score that respects the order."""
    return probs @ np.arange(probs.shape[1])


def fit_thresholds(scores: np.ndarray, y: np.ndarray, n_classes: int, *, rounds: int = 3,
                   max_candidates: int = 40) -> np.ndarray:
    """Cut points on a continuous grade score that maximise quadratic weighted kappa on ``(scores, y)``.

    Coordinate search from the midpoints 0.5, 1.5, ...: each cut point in turn moves to the
    best of (at most ``max_candidates``) points halfway between neighbouring scores that lie
    strictly between its neighbours' cut points, and stays where it is unless one scores
    higher. So the result is always strictly increasing and never scores below the
    midpoints, for any scores (ties, a constant, extreme values) and labels (classes absent).
    Fit them on the validation split, never on the test split.
    """
    from .metrics import quadratic_weighted_kappa

    big = np.finfo(np.float64).max
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64).ravel(), nan=0.0, posinf=big, neginf=-big)
    y = np.asarray(y).ravel()
    thresholds = np.arange(max(n_classes - 1, 0), dtype=np.float64) + 0.5
    values = np.unique(scores)
    midpoints = np.r_[values[:-1] / 2 + values[1:] / 2, values[:1] - 1.0, values[-1:] + 1.0]  # halves: no overflow

    def score(cuts: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one predicted grade for all: kappa is 0/0
            kappa = quadratic_weighted_kappa(y, np.digitize(scores, cuts)) if len(y) else float("nan")
        return kappa if np.isfinite(kappa) else -np.inf

    best = score(thresholds)
    for _ in range(rounds):
        for i in range(len(thresholds)):
            lo = thresholds[i - 1] if i else -np.inf
            hi = thresholds[i + 1] if i + 1 < len(thresholds) else np.inf
            candidates = np.unique(midpoints[(midpoints > lo) & (midpoints < hi)])
            if candidates.size > max_candidates:
                candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, max_candidates), method="nearest"))
            for c in candidates:
                trial = thresholds.copy()
                trial[i] = c
                kappa = score(trial)
                if kappa > best:
                    best, thresholds = kappa, trial
    return thresholds


def apply_thresholds(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Grades from scores and cut points."""
    return np.digitize(scores, thresholds)


def ordinal_predictions(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Grades from class probabilities by two rules: ``argmax`` and ``thresholds``.

    ``thresholds`` cuts the expected grade at points fitted on the validation split to
    maximise quadratic weighted kappa (so its validation kappa is optimistic; the test
    split plays no part). Returns ``{rule: {split: grades}}`` and the thresholds.
    """
    n_classes = probs["val"].shape[1]
    thresholds = fit_thresholds(expected_grade(probs["val"]), labels["val"], n_classes)
    return {
        "argmax": {split: p.argmax(1) for split, p in probs.items()},
        "thresholds": {split: apply_thresholds(expected_grade(p), thresholds) for split, p in probs.items()},
    }, thresholds
