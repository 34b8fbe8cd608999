"""Throughput against the hardware, for ``make bench``: the machine's matmul rate, FLOP counts, images/s.

Images/s of frozen feature extraction and of one ``finetune_top`` training step, each
divided by the rate this machine's measured single-precision matrix-multiply speed allows
for the FLOPs that computation needs (counted with
:class:`torch.utils.flop_counter.FlopCounterMode`); and images/s of ``tl.predict`` with a
saved model on photo files (decoding and the model load included). See
``benchmarks/README.md`` for what each figure means.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.benchmark import Timer

from ..env import seed_everything
from ..export import save_model
from ..inference import predict_table
from ..models import Backbone, load_backbone
from ..preprocess import clothing_pipeline, pad_colour
from ..env import autocast
from ..frozen import FrozenTrunk, cut_before_last as cut_at, split_model
from ..loop import param_groups
from ..train import class_weights, top_config

TOP_STAGES = 2  # stages finetune_top trains, as notebook 04's TOP_STAGES


# --------------------------------------------------------------------------- the machine


def machine_description(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, torch threads and versions, device, and the load average (a shared machine shows it)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count()
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def best_seconds(step: Callable[[], None], calls: int, repeats: int) -> float:
    """Seconds of ``calls`` calls of ``step``: the best of ``repeats`` timings, each after a warm-up.

    Timed by :class:`torch.utils.benchmark.Timer`, which waits for the accelerator before
    reading the clock; it runs on all of torch's threads (its default is one). The best
    repeat is the least disturbed by other processes, so the closest to what the hardware can do.
    """
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return min(timer.timeit(calls).raw_times[0] for _ in range(repeats))


def matmul_peak_flops(dtype: torch.dtype = torch.float32, size: int = 2048, device: torch.device | None = None, *,
                      repeats: int = 10, inner: int = 3) -> float:
    """This machine's matrix-multiply rate in FLOP/s: ``torch.mm`` of two ``size``-square matrices, best of ``repeats``.

    Each repeat times ``inner`` products (``2 * size**3`` FLOPs each).
    """
    device = device or torch.device("cpu")
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    return 2.0 * size ** 3 * inner / best_seconds(lambda: torch.mm(a, b, out=out), inner, repeats)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None) -> int:
    """FLOPs of a convolution's backward: the forward's count for each gradient computed (input, weight)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)  # w_shape carries the groups
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def model_flops(model: nn.Module, input_shape: Sequence[int], *, backward: bool = False,
                device: torch.device | None = None) -> int:
    """FLOPs of one forward pass of ``model`` on a random ``input_shape`` batch (plus the backward pass if asked).

    Counted by :class:`~torch.utils.flop_counter.FlopCounterMode`: matrix products and
    convolutions (groups included), 2 FLOPs per multiply-add. With ``backward=True`` the
    backward pass of a scalar loss runs under the counter too, so only the gradients that
    are actually computed count: none for frozen parameters, none for the input.
    Convolution gradients are counted by :func:`_conv_backward_flops`, because torch's own
    formula ignores groups for the weight gradient (see ``benchmarks/README.md``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = device or torch.device("cpu")
    x = torch.randn(*input_shape, device=device)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        if backward:
            out = model(x)
            out = out if isinstance(out, torch.Tensor) else out[0]
            out.float().sum().backward()
        else:
            with torch.no_grad():
                model(x)
    if backward:
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _best_rate(step: Callable[[], None], items_per_step: int, *, repeats: int, steps: int) -> float:
    """Items/s of ``step``: ``steps`` calls per repeat, best repeat."""
    return items_per_step * steps / best_seconds(step, steps, repeats)


# --------------------------------------------------------------------------- the library's default path


def _trunk_and_top(backbone: Backbone, cut: str, device: torch.device,
                   profile) -> tuple[nn.Module, str, nn.Module, bool]:
    """The trunk exactly as FrozenTrunk prepares it (channels-last on a CPU), its precision, the top as
    finetune_top trains it, and whether the trunk's weights are channels-last."""
    frozen = FrozenTrunk(backbone, cut, transform=None, device=device)
    trunk, precision = frozen.trunk.to(device), frozen.precision
    _, top = split_model(backbone, cut)
    top = top.to(device)
    if profile.channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    stem_weight = next(p for p in trunk.parameters() if p.dim() == 4)
    return trunk, precision, top, stem_weight.is_contiguous(memory_format=torch.channels_last)


def _extraction(trunk: nn.Module, precision: str, images: torch.Tensor, device: torch.device, *, repeats: int,
                steps: int) -> tuple[float, int, tuple[int, ...]]:
    """Images/s of the frozen pass over ``images``, its FLOPs per image and the shape of one activation."""
    def extract() -> None:
        with torch.no_grad(), autocast(device, precision):
            trunk(images).to(torch.float16).cpu()

    rate = _best_rate(extract, len(images), repeats=repeats, steps=steps)
    flops = model_flops(trunk, (1, *images.shape[1:]), device=device)
    with torch.no_grad():
        act_shape = tuple(trunk(images[:1]).shape[1:])  # (C, h, w) of one cached activation
    return rate, flops, act_shape


def _finetune_step(top: nn.Module, act_shape: tuple[int, ...], config, n_classes: int, device: torch.device, *,
                   repeats: int, steps: int) -> tuple[float, float]:
    """Images/s of one fit step of ``top`` on cached activations, and its FLOPs per image (forward + backward)."""
    top.train()
    optimizer = torch.optim.AdamW(param_groups(top, [str(len(top) - 1)], config.lr_head, config.lr_backbone,
                                               config.weight_decay))
    labels = torch.arange(config.batch_size, device=device) % n_classes
    weight = class_weights(labels.cpu().numpy(), n_classes).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    acts = torch.randn(config.batch_size, *act_shape, device=device)  # (batch, C, h, w), as fit feeds them

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(top(acts), labels)
        loss.backward()
        optimizer.step()

    rate = _best_rate(train_step, config.batch_size, repeats=repeats, steps=steps)
    flops = model_flops(top, (config.batch_size, *act_shape), backward=True, device=device) / config.batch_size
    return rate, flops


def throughput(backbone_name: str, profile, device: torch.device, *, n_classes: int, top_stages: int = TOP_STAGES,
               peak_flops: float, peak_flops_bf16: float | None = None, repeats: int = 5, steps: int = 2,
               seed: int = 0) -> dict[str, Any]:
    """Images/s of frozen feature extraction and of a ``finetune_top`` step, against the matmul-bound limit.

    Feature extraction is what :class:`~tutorial_lib.train.FrozenTrunk` computes for each
    image: the trunk in eval mode without gradients, at the profile's image size and batch
    size, in the trunk's precision (bfloat16 autocast where the hardware has it), outputs
    converted to float16 as the cache stores them. Images are random tensors:
    this measures the computation, not JPEG decoding (the time-to-accuracy run includes that).
    A fine-tuning step is one step of :func:`~tutorial_lib.train.fit` on the top (the last
    ``top_stages`` stages and the head) fed with cached activations: forward, class-weighted
    label-smoothed loss, backward, AdamW step, at notebook 04's batch size.
    The limit is ``peak_flops / FLOPs per image`` (the float32 matmul rate, as the issue
    defines it); when extraction runs in bfloat16, ``peak_flops_bf16`` gives a second, stricter
    fraction against the bfloat16 matmul rate.
    """
    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=n_classes)
    cut = cut_at(backbone, top_stages)
    trunk, precision, top, channels_last = _trunk_and_top(backbone, cut, device, profile)
    size, batch = profile.image_size, profile.batch_size
    images = torch.randn(batch, 3, size, size, device=device)  # (batch, 3, H, W); the trunk converts its input
    extract_rate, extract_flops, act_shape = _extraction(trunk, precision, images, device, repeats=repeats,
                                                         steps=steps)
    config = top_config(profile, seed)
    step_rate, step_flops = _finetune_step(top, act_shape, config, n_classes, device, repeats=repeats, steps=steps)
    extract_limit = peak_flops / extract_flops
    step_limit = peak_flops / step_flops
    bf16_limit = peak_flops_bf16 / extract_flops if precision == "bfloat16" and peak_flops_bf16 else None
    return {
        "feature_extraction": {"images_per_s": extract_rate, "flops_per_image": extract_flops,
                               "limit_images_per_s": extract_limit, "fraction_of_limit": extract_rate / extract_limit,
                               "precision": precision, "bfloat16_limit_images_per_s": bf16_limit,
                               "fraction_of_bfloat16_limit": extract_rate / bf16_limit if bf16_limit else None,
                               "batch_size": batch, "image_size": size, "channels_last": channels_last,
                               "what": f"{backbone.name} trunk up to {cut}, eval, no_grad"},
        "finetune_step": {"images_per_s": step_rate, "flops_per_image": step_flops,
                          "limit_images_per_s": step_limit, "fraction_of_limit": step_rate / step_limit,
                          "batch_size": config.batch_size, "activation_shape": list(act_shape),
                          "what": f"{backbone.name} from {cut} + head on cached activations: forward, backward, AdamW"},
    }


def predict_rate(backbone_name: str, profile, device: torch.device, photos: Sequence[Path], classes: Sequence[str],
                 *, seed: int = 0) -> dict[str, Any]:
    """Images/s of ``tl.predict`` on photo files, model load included: what a user of a saved model waits for.

    The model is the backbone with a new head (its weights do not change the cost), saved with
    notebook 04's preprocessing at the profile's image size; each file is decoded, resized, padded
    and normalised, as ``python -m tutorial_lib predict`` does.
    """
    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=len(classes))
    size = profile.image_size
    with tempfile.TemporaryDirectory() as tmp:
        save_model(backbone, Path(tmp) / "model", classes=classes, image_size=size,
                   preprocess=clothing_pipeline(size, fill=pad_colour(backbone.data_config)))
        started = time.perf_counter()
        table, _ = predict_table(Path(tmp) / "model", list(photos), device=device, progress=False)
        seconds = time.perf_counter() - started
    return {"images_per_s": len(table) / seconds, "seconds": seconds, "images": len(table), "image_size": size,
            "what": f"tl.predict of {backbone.name} on {len(table)} clothing test photos (files), model load included"}
