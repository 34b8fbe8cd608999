"""Benchmarks behind ``make bench``: time to accuracy, throughput against the hardware, the demo's cost.

Three questions, each answered with raw figures and a ratio (see ``benchmarks/README.md``):

- **Time to accuracy.** Seconds until the validation accuracy on the clothing set first
  reaches a threshold (0.85), for the library's default fine-tuning path (notebook 04:
  frozen-trunk activations cached once, then ``finetune_top``) and for the recipe of the
  PyTorch "Transfer Learning for Computer Vision" tutorial (whole network, batch 4, SGD
  lr 1e-3 momentum 0.9, StepLR 7/0.1, random resized crop + flip), on the same backbone,
  data and machine. The recipe runs under a wall-clock budget; if it does not get there,
  the budget is reported as a lower bound.
- **Throughput against the hardware.** Images/s of frozen feature extraction and of one
  ``finetune_top`` training step, each divided by the rate this machine's measured
  single-precision matrix-multiply speed allows for the FLOPs that computation needs
  (counted with :class:`torch.utils.flop_counter.FlopCounterMode`); and images/s of
  ``tl.predict`` with a saved model on the clothing test photos (files decoded, load included).
- **The demo.** Wall seconds and peak resident memory of each notebook run by
  ``python -m tutorial_lib run`` and of the whole run.

:func:`run_bench` does all three and :func:`write_report` writes ``bench.json`` and
``bench.md``; ``python -m tutorial_lib bench`` is the command line.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

THRESHOLD = 0.85  # validation accuracy that counts as "there"
TOP_STAGES = 2  # stages finetune_top trains, as notebook 04's TOP_STAGES
TARGETS = {"time_to_accuracy_ratio": 10.0, "feature_extraction_fraction_of_limit": 0.5,
           "demo_total_seconds": 600.0, "demo_max_peak_rss_mb": 2048.0}


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(dtype: torch.dtype = torch.float32, size: int = 2048, device: torch.device | None = None, *,
                      repeats: int = 10, inner: int = 3) -> float:
    """This machine's matrix-multiply rate in FLOP/s: ``torch.mm`` of two ``size``-square matrices, best of ``repeats``.

    Each repeat times ``inner`` products (``2 * size**3`` FLOPs each); the best repeat is
    the least disturbed by other processes, so it is the closest to what the hardware can do.
    """
    device = device or torch.device("cpu")
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    torch.mm(a, b, out=out)  # warm-up
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 * inner / best


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
    Convolution gradients are counted by :func:`_conv_backward_flops`: torch's own formula
    ignores groups for the weight gradient (a 1152-channel depthwise 3x3 conv on a 3x3 map
    counts 215 MFLOP instead of 0.37 MFLOP: measured with torch 2.14).
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


def _best_rate(step: Callable[[], None], items_per_step: int, device: torch.device, *, repeats: int,
               steps: int) -> float:
    """Items/s of ``step``: ``steps`` calls per repeat after one warm-up call, best repeat."""
    step()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return items_per_step * steps / best


# --------------------------------------------------------------------------- the library's default path


def default_top_config(profile, seed: int = 0):
    """The ``finetune_top`` settings of notebook 04 (its cell ``top_config = ...``) for ``profile``."""
    from .train import TrainConfig

    return TrainConfig(epochs=profile.top_epochs, batch_size=64, lr_head=1e-3, lr_backbone=5e-4,
                       weight_decay=1e-2, seed=seed)


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
    from .env import seed_everything
    from .models import load_backbone
    from .train import FrozenTrunk, class_weights, param_groups, precision_autocast, split_model
    from .train import top_stages as cut_at

    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=n_classes)
    # the trunk exactly as FrozenTrunk prepares it (channels-last on a CPU); the top as finetune_top trains it
    frozen = FrozenTrunk(backbone, cut_at(backbone, top_stages), transform=None, device=device)
    trunk, precision = frozen.trunk.to(device), frozen.precision
    _, top = split_model(backbone, cut_at(backbone, top_stages))
    top = top.to(device)
    if profile.channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    stem_weight = next(p for p in trunk.parameters() if p.dim() == 4)
    channels_last = stem_weight.is_contiguous(memory_format=torch.channels_last)
    size, batch = profile.image_size, profile.batch_size
    images = torch.randn(batch, 3, size, size, device=device)  # (batch, 3, H, W); the trunk converts its input

    def extract() -> None:
        with torch.no_grad(), precision_autocast(device, precision):
            trunk(images).to(torch.float16).cpu()

    extract_rate = _best_rate(extract, batch, device, repeats=repeats, steps=steps)
    extract_flops = model_flops(trunk, (1, 3, size, size), device=device)
    with torch.no_grad():
        act_shape = tuple(trunk(images[:1]).shape[1:])  # (C, h, w) of one cached activation

    config = default_top_config(profile, seed)
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

    step_rate = _best_rate(train_step, config.batch_size, device, repeats=repeats, steps=steps)
    step_flops = model_flops(top, (config.batch_size, *act_shape), backward=True, device=device) / config.batch_size
    extract_limit = peak_flops / extract_flops
    step_limit = peak_flops / step_flops
    bf16_limit = peak_flops_bf16 / extract_flops if precision == "bfloat16" and peak_flops_bf16 else None
    return {
        "feature_extraction": {"images_per_s": extract_rate, "flops_per_image": extract_flops,
                               "limit_images_per_s": extract_limit, "fraction_of_limit": extract_rate / extract_limit,
                               "precision": precision, "bfloat16_limit_images_per_s": bf16_limit,
                               "fraction_of_bfloat16_limit": extract_rate / bf16_limit if bf16_limit else None,
                               "batch_size": batch, "image_size": size, "channels_last": channels_last,
                               "what": f"{backbone.name} trunk up to {cut_at(backbone, top_stages)}, eval, no_grad"},
        "finetune_step": {"images_per_s": step_rate, "flops_per_image": step_flops,
                          "limit_images_per_s": step_limit, "fraction_of_limit": step_rate / step_limit,
                          "batch_size": config.batch_size, "activation_shape": list(act_shape),
                          "what": f"{backbone.name} from {cut_at(backbone, top_stages)} + head on cached "
                                  "activations: forward, backward, AdamW"},
    }


def predict_rate(backbone_name: str, profile, device: torch.device, photos: Sequence[Path], classes: Sequence[str],
                 *, seed: int = 0) -> dict[str, Any]:
    """Images/s of ``tl.predict`` on photo files, model load included: what a user of a saved model waits for.

    The model is the backbone with a new head (its weights do not change the cost), saved with
    notebook 04's preprocessing at the profile's image size; each file is decoded, resized, padded
    and normalised, as ``python -m tutorial_lib predict`` does.
    """
    from .env import seed_everything
    from .export import save_model
    from .inference import predict_table
    from .models import load_backbone
    from .preprocess import clothing_pipeline, pad_colour

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


# --------------------------------------------------------------------------- time to accuracy


@dataclass
class AccuracyRun:
    """When a training run's validation accuracy was measured, and when it first reached the threshold."""

    name: str
    threshold: float
    budget_s: float | None = None
    timeline: list[dict[str, float]] = field(default_factory=list)  # {"seconds", "epoch", "val_accuracy"}
    seconds: float | None = None  # first time val accuracy >= threshold (None: never)
    stopped_at_s: float = 0.0  # clock when the run ended
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return self.seconds is not None

    def record(self, seconds: float, epoch: float, accuracy: float) -> None:
        """Add one validation measurement."""
        self.timeline.append({"seconds": round(seconds, 2), "epoch": round(epoch, 3),
                              "val_accuracy": round(float(accuracy), 4)})
        if self.seconds is None and accuracy >= self.threshold:
            self.seconds = seconds


def time_to_accuracy_ours(splits: dict, n_classes: int, device: torch.device, *, backbone_name: str = "auto",
                          profile, threshold: float = THRESHOLD, top_stages: int = TOP_STAGES, seed: int = 0,
                          progress: bool = True) -> AccuracyRun:
    """The library's default fine-tuning path (notebook 04), timed from the first image to each validation.

    The clock starts after the backbone is loaded and covers everything ``finetune_top``
    needs: the frozen trunk's activations of the training images (as is and mirrored) and
    of the validation images, computed into an empty cache, then every epoch of training.
    Validation accuracy is read after each epoch (``fit`` computes it anyway).
    """
    from .env import seed_everything
    from .models import load_backbone, make_transform
    from .train import FrozenTrunk, finetune_top
    from .train import top_stages as cut_at

    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=n_classes)
    size = profile.image_size
    eval_tf = make_transform(backbone, input_size=(3, size, size))
    config = default_top_config(profile, seed)
    run = AccuracyRun("finetune_top (library default)", threshold,
                      notes={"backbone": backbone.name, "profile": profile.name, "image_size": size,
                             "epochs": config.epochs, "batch_size": config.batch_size,
                             "train_views": ["identity", "hflip"], "n_train": len(splits["train"]),
                             "n_val": len(splits["val"])})
    needed = {"train": splits["train"], "val": splits["val"]}  # test activations play no part in val accuracy
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as cache:
        start = time.perf_counter()
        frozen = FrozenTrunk(backbone, cut_at(backbone, top_stages), eval_tf, device, cache_dir=Path(cache),
                             batch_size=profile.batch_size)
        for view in ("identity", "hflip"):
            frozen.activations(needed["train"], view)
        frozen.activations(needed["val"])
        cached = time.perf_counter() - start
        epochs_done = [0]

        def score(y: np.ndarray, pred: np.ndarray) -> float:  # fit calls this once per epoch, after validation
            accuracy = float((y == pred).mean())
            epochs_done[0] += 1
            run.record(time.perf_counter() - start, epochs_done[0], accuracy)
            return accuracy

        finetune_top(frozen, needed, config, n_classes=n_classes, train_views=("identity", "hflip"), score=score,
                     progress=progress)
        run.stopped_at_s = time.perf_counter() - start
    n_cached = 2 * len(needed["train"]) + len(needed["val"])
    run.notes.update({"caching_seconds": round(cached, 2), "images_cached": n_cached,
                      "caching_images_per_s": round(n_cached / cached, 2), "cut": frozen.cut})
    return run


class _Clock:
    """A stopwatch that can be paused (the recipe's extra validation checks are not charged to it)."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def __call__(self) -> float:
        return time.perf_counter() - self.start - self.paused

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time spent inside this block is not on the clock."""
        paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - paused_at


def time_to_accuracy_recipe(splits: dict, n_classes: int, device: torch.device, *, backbone_name: str = "auto",
                            threshold: float = THRESHOLD, budget_s: float = 1200.0, image_size: int = 224,
                            checks_per_epoch: int = 4, max_epochs: int = 25, batch_size: int = 4, seed: int = 0,
                            progress: bool = True) -> AccuracyRun:
    """The PyTorch "Transfer Learning for Computer Vision" tutorial's fine-tuning recipe, timed.

    Whole network trainable with a new head, batch 4, ``SGD(lr=1e-3, momentum=0.9)``,
    ``StepLR(step_size=7, gamma=0.1)``, training images ``RandomResizedCrop(224)`` + flip,
    validation ``Resize(256)`` + ``CenterCrop(224)``, validated after every epoch (at
    batch 4, as the tutorial does: that time is charged). The normalisation is the
    backbone's own (read from it, not typed in). So that the time is not rounded up to whole
    epochs, validation accuracy is also checked ``checks_per_epoch - 1`` times within each
    epoch; the clock is paused during those extra checks. The run stops when the threshold is
    reached or the clock passes ``budget_s`` (then the budget is a lower bound).
    """
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from .progress import tqdm

    from .data import ImageDataset
    from .env import make_generator, seed_everything
    from .models import load_backbone

    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=n_classes)
    model = backbone.model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    mean, std = backbone.data_config["mean"], backbone.data_config["std"]
    resize = round(image_size * 256 / 224)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    eval_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_loader = DataLoader(ImageDataset(splits["train"], train_tf), batch_size=batch_size, shuffle=True,
                              generator=make_generator(seed))
    val_data = ImageDataset(splits["val"], eval_tf)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    run = AccuracyRun("tutorial recipe (whole network)", threshold, budget_s=budget_s,
                      notes={"backbone": backbone.name, "image_size": image_size, "batch_size": batch_size,
                             "checks_per_epoch": checks_per_epoch, "n_train": len(splits["train"]),
                             "n_val": len(splits["val"])})

    @torch.no_grad()
    def val_accuracy(eval_batch: int) -> float:
        model.eval()
        correct = 0
        for x, y in DataLoader(val_data, batch_size=eval_batch):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        model.train()
        return correct / len(val_data)

    n_batches = len(train_loader)
    checkpoints = {max(1, round(n_batches * k / checks_per_epoch)) for k in range(1, checks_per_epoch)} - {n_batches}
    clock = _Clock()
    over_budget = False
    images_trained = 0
    for epoch in range(max_epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"recipe epoch {epoch + 1}", leave=False, disable=not progress)
        for i, (x, y) in enumerate(bar, 1):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            images_trained += len(y)
            if i in checkpoints:
                now = clock()
                with clock.pause():
                    run.record(now, epoch + i / n_batches, val_accuracy(eval_batch=64))  # extra check: not charged
                if run.reached:
                    break
            if clock() > budget_s:
                over_budget = True
                break
        if run.reached or over_budget:
            break
        scheduler.step()
        accuracy = val_accuracy(eval_batch=batch_size)  # the tutorial's own validation: charged
        run.record(clock(), epoch + 1, accuracy)
        if progress:
            print(f"recipe epoch {epoch + 1}: val acc {accuracy:.3f} at {clock():.0f} s")
        if run.reached or clock() > budget_s:
            break
    run.stopped_at_s = clock()
    run.notes.update({"images_trained": images_trained, "paused_for_extra_checks_s": round(clock.paused, 2),
                      "train_images_per_s": round(images_trained / max(run.stopped_at_s, 1e-9), 2)})
    return run


def summarise_time_to_accuracy(ours: AccuracyRun, recipe: AccuracyRun) -> dict[str, Any]:
    """The time-to-accuracy figure: each side's seconds, and ``recipe / ours``.

    A recipe that ran out of its budget counts as the time it ran (a lower bound), and the
    ratio is then a lower bound too. If ours never got there, there is no ratio.
    """
    recipe_s = recipe.seconds if recipe.reached else recipe.stopped_at_s
    ratio = recipe_s / ours.seconds if ours.reached and ours.seconds > 0 else None
    return {"threshold": ours.threshold, "ours_seconds": ours.seconds, "ours_reached": ours.reached,
            "recipe_seconds": recipe_s, "recipe_reached": recipe.reached,
            "recipe_seconds_is_lower_bound": not recipe.reached,
            "time_to_accuracy_ratio": ratio, "ratio_is_lower_bound": ratio is not None and not recipe.reached,
            "ours": asdict(ours), "recipe": asdict(recipe)}


# --------------------------------------------------------------------------- the demo


def demo_runtime(*, run: bool, results: Path | None = None, profile: str | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Wall seconds and peak RSS of each notebook and of the whole demo.

    ``run=True`` executes every notebook (``python -m tutorial_lib run``'s path) into a
    temporary folder and results file; ``run=False`` reads the ``runtime`` section of an
    existing results file (default ``outputs/results.json``), as the last demo left it.
    """
    from .report import load_results, results_path

    if run:
        from . import runner

        with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
            parameters = {"PROFILE": profile} if profile else {}
            start = time.perf_counter()
            runner.run_notebooks(runner.discover_notebooks(), output_dir=Path(tmp) / "notebooks",
                                 parameters=parameters, results=Path(tmp) / "results.json", echo=echo)
            wall = time.perf_counter() - start
            runtime = load_results(Path(tmp) / "results.json").get("runtime", {})
        source = "measured by this bench run (python -m tutorial_lib run)"
    else:
        path = results_path(results)
        runtime = load_results(path).get("runtime", {}) if path.exists() else {}
        wall = None
        source = (f"read from {path} (last modified {time.strftime('%Y-%m-%d %H:%M', time.localtime(path.stat().st_mtime))})"
                  if path.exists() else f"not measured: {path} does not exist")
    notebooks = {name: {"seconds": float(r["seconds"]), "peak_rss_mb": float(r["peak_rss_mb"])}
                 for name, r in sorted(runtime.items())}
    total = sum(r["seconds"] for r in notebooks.values()) if notebooks else None
    peak = max((r["peak_rss_mb"] for r in notebooks.values()), default=None)
    return {"source": source, "notebooks": notebooks, "total_seconds": total, "runner_wall_seconds": wall,
            "max_peak_rss_mb": peak}


# --------------------------------------------------------------------------- the whole bench


@dataclass(frozen=True)
class BenchSettings:
    """How much work :func:`run_bench` does."""

    budget_s: float = 1200.0  # the recipe's wall-clock budget
    threshold: float = THRESHOLD
    profile: str = "default"  # the library's run profile (image size, batch size, epochs)
    max_images: int | None = None  # cap on every split (quick runs)
    recipe_image_size: int = 224
    matmul_size: int = 2048
    repeats: int = 5  # best-of repeats for the throughput figures
    run_demo: bool = True
    results: str | None = None  # results.json to read the demo's runtime from when not running it
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchSettings":
        """Tiny sizes for a smoke test of the harness: every figure is produced, none is meaningful."""
        return replace(cls(budget_s=20.0, profile="quick", max_images=20, recipe_image_size=96, matmul_size=512,
                           repeats=1, run_demo=False), **overrides)


def run_bench(settings: BenchSettings = BenchSettings(), device: torch.device | None = None, *,
              backbone_name: str = "auto", progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything and return the ``bench.json`` content (see the module docstring)."""
    from .data import load_dataset
    from .env import get_device
    from .train import get_profile, limit_split, resolve_precision

    device = device or get_device("auto")
    started = time.perf_counter()
    machine = machine_description(device)
    profile = get_profile(settings.profile, device)
    if settings.max_images is not None:
        profile = replace(profile, max_images=settings.max_images)
    data = load_dataset("clothing", seed=settings.seed)
    splits = {name: limit_split(split, profile.max_images, settings.seed) for name, split in data.splits.items()}
    n_classes = len(data.classes)

    echo(f"[bench] matrix-multiply peak ({settings.matmul_size}^2, float32) ...")
    peak = matmul_peak_flops(torch.float32, settings.matmul_size, device)
    peak_bf16 = None
    if resolve_precision("auto", device) == "bfloat16":  # the trunk will run in bfloat16: measure that rate too
        peak_bf16 = matmul_peak_flops(torch.bfloat16, settings.matmul_size, device)
        echo(f"[bench] bfloat16 matrix-multiply peak: {peak_bf16 / 1e9:.1f} GFLOP/s")
    echo(f"[bench] {peak / 1e9:.1f} GFLOP/s; throughput of feature extraction and a fine-tuning step ...")
    rates = throughput(backbone_name, profile, device, n_classes=n_classes, peak_flops=peak,
                       peak_flops_bf16=peak_bf16, repeats=settings.repeats, seed=settings.seed)
    rates["predict"] = predict_rate(backbone_name, profile, device, splits["test"].images, data.classes,
                                    seed=settings.seed)
    echo(f"[bench] predict: {rates['predict']['images_per_s']:.1f} img/s; time to accuracy {settings.threshold}: "
         "library default path ...")
    ours = time_to_accuracy_ours(splits, n_classes, device, backbone_name=backbone_name, profile=profile,
                                 threshold=settings.threshold, seed=settings.seed, progress=progress)
    echo(f"[bench] ours: {ours.seconds} s; tutorial recipe (budget {settings.budget_s:.0f} s) ...")
    recipe = time_to_accuracy_recipe(splits, n_classes, device, backbone_name=backbone_name,
                                     threshold=settings.threshold, budget_s=settings.budget_s,
                                     image_size=settings.recipe_image_size, seed=settings.seed, progress=progress)
    tta = summarise_time_to_accuracy(ours, recipe)
    echo(f"[bench] recipe: {tta['recipe_seconds']:.0f} s (reached: {recipe.reached}); demo ...")
    demo = demo_runtime(run=settings.run_demo, results=Path(settings.results) if settings.results else None,
                        echo=echo)
    machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": asdict(settings),
        "machine": machine,
        "dataset": {"name": data.name, "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                    "n_classes": n_classes},
        "time_to_accuracy_ratio": tta["time_to_accuracy_ratio"],
        "feature_extraction_fraction_of_limit": rates["feature_extraction"]["fraction_of_limit"],
        "finetune_step_fraction_of_limit": rates["finetune_step"]["fraction_of_limit"],
        "matmul_peak_flops": peak,
        "matmul_peak_flops_bfloat16": peak_bf16,
        "time_to_accuracy": tta,
        "throughput": rates,
        "demo": demo,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(bench: dict[str, Any]) -> str:
    """The targets, what was measured and whether each is met, then the raw figures, as markdown."""
    tta, rates, demo, machine = bench["time_to_accuracy"], bench["throughput"], bench["demo"], bench["machine"]

    def met(value: float | None, ok: Callable[[float], bool]) -> str:
        return "—" if value is None else ("yes" if ok(value) else "no")

    ratio = bench["time_to_accuracy_ratio"]
    bound = "≥ " if tta["ratio_is_lower_bound"] else ""
    fe, ft = rates["feature_extraction"], rates["finetune_step"]
    rows = [
        ("Time to val accuracy ≥ {:.2f}: recipe / ours".format(tta["threshold"]), "≥ 10×",
         "—" if ratio is None else f"{bound}{ratio:.1f}× ({bound}{tta['recipe_seconds']:.0f} s / "
                                   f"{tta['ours_seconds']:.0f} s)",
         "not shown (lower bound below target)" if tta["ratio_is_lower_bound"] and ratio is not None
         and ratio < TARGETS["time_to_accuracy_ratio"] else met(ratio, lambda r: r >= TARGETS["time_to_accuracy_ratio"])),
        (f"Frozen feature extraction ({fe.get('precision', 'float32')}), fraction of the float32 matmul-bound rate",
         "≥ 50%", f"{fe['fraction_of_limit']:.0%} ({fe['images_per_s']:.1f} of {fe['limit_images_per_s']:.1f} img/s)",
         met(fe["fraction_of_limit"], lambda f: f >= TARGETS["feature_extraction_fraction_of_limit"])),
        *([("Same, against the bfloat16 matmul-bound rate (stricter)", "(none)",
            f"{fe['fraction_of_bfloat16_limit']:.0%} ({fe['images_per_s']:.1f} of "
            f"{fe['bfloat16_limit_images_per_s']:.1f} img/s)", "—")] if fe.get("fraction_of_bfloat16_limit") else []),
        *([(f"`predict` on {rates['predict']['images']} photo files, model load included", "(none)",
            f"{rates['predict']['images_per_s']:.1f} img/s ({rates['predict']['seconds']:.1f} s)", "—")]
          if rates.get("predict") else []),
        ("Fine-tuning step, fraction of matmul-bound rate", "(none)",
         f"{ft['fraction_of_limit']:.0%} ({ft['images_per_s']:.1f} of {ft['limit_images_per_s']:.1f} img/s)", "—"),
        ("Whole default demo, wall time", "≤ 600 s", _fmt(demo["total_seconds"], 0) + " s"
         if demo["total_seconds"] is not None else "—",
         met(demo["total_seconds"], lambda s: s <= TARGETS["demo_total_seconds"])),
        ("Largest notebook peak RSS", "≤ 2048 MB", _fmt(demo["max_peak_rss_mb"], 0) + " MB"
         if demo["max_peak_rss_mb"] is not None else "—",
         met(demo["max_peak_rss_mb"], lambda m: m <= TARGETS["demo_max_peak_rss_mb"])),
    ]
    lines = [f"# Benchmark ({bench['date']})", "",
             f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['torch_threads']} torch "
             f"threads, torch {machine['torch']}, device {machine['device']}; load average "
             f"{machine.get('load_average_1min')} at start, {machine.get('load_average_1min_at_end')} at end. "
             f"Matrix-multiply peak (float32): {bench['matmul_peak_flops'] / 1e9:.1f} GFLOP/s"
             + (f"; bfloat16: {bench['matmul_peak_flops_bfloat16'] / 1e9:.1f} GFLOP/s"
                if bench.get("matmul_peak_flops_bfloat16") else "") + ".", "",
             "| Figure | Target | Measured | Met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    ours, recipe = tta["ours"], tta["recipe"]
    lines += ["", "## Time to accuracy", "",
              f"- Ours ({ours['notes'].get('backbone')}, {ours['notes'].get('profile')} profile): caching "
              f"{ours['notes'].get('caching_seconds')} s for {ours['notes'].get('images_cached')} images, then "
              f"validation accuracy " + ", ".join(f"{p['val_accuracy']:.3f} at {p['seconds']:.0f} s"
                                                  for p in ours["timeline"]) + ".",
              f"- Recipe (budget {_fmt(recipe['budget_s'], 0)} s, reached: {tta['recipe_reached']}, stopped at "
              f"{recipe['stopped_at_s']:.0f} s): validation accuracy "
              + (", ".join(f"{p['val_accuracy']:.3f} at {p['seconds']:.0f} s (epoch {p['epoch']:g})"
                           for p in recipe["timeline"]) or "not measured before the budget ran out") + ".",
              "", "## Demo", "", f"Source: {demo['source']}.", ""]
    if demo["notebooks"]:
        lines += ["| Notebook | Wall s | Peak RSS MB |", "|---|---|---|"]
        lines += [f"| {name} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |" for name, r in demo["notebooks"].items()]
        lines += [f"| **total** | {demo['total_seconds']:.0f} | {demo['max_peak_rss_mb']:.0f} (max) |"]
    return "\n".join(lines) + "\n"


def write_report(bench: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` at ``path`` and the markdown table beside it (``.md``); return both paths."""
    import json

    from .report import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(bench, indent=2, default=float) + "\n")
    md = path.with_suffix(".md")
    atomic_write_text(md, markdown_table(bench))
    return path, md
