"""Time to accuracy, for ``make bench``: the library's default path against the PyTorch tutorial's recipe.

Seconds until the validation accuracy on the clothing set first reaches a threshold
(0.85), for the library's default fine-tuning path (notebook 04: frozen-trunk activations
cached once, then ``finetune_top``) and for the recipe of the PyTorch "Transfer Learning
for Computer Vision" tutorial (whole network, batch 4, SGD lr 1e-3 momentum 0.9, StepLR
7/0.1, random resized crop + flip), on the same backbone, data and machine. The recipe
runs under a wall-clock budget; if it does not get there, the budget is reported as a
lower bound.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from ..data import ImageDataset
from ..env import make_generator, seed_everything
from ..models import load_backbone, make_transform
from ..preprocess import Compose, ResizePad, pad_colour
from ..progress import tqdm
from ..frozen import FrozenTrunk, cut_before_last as cut_at
from ..train import finetune_top, top_config
from .bench_throughput import TOP_STAGES

THRESHOLD = 0.85  # validation accuracy that counts as "there"
TRAIN_VIEWS = ("identity",)  # notebook 04's: mirrored copies did not raise GoogLeNet's validation accuracy


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
    needs: the frozen trunk's activations of the training images (resized and padded as in
    notebook 04, in its training views) and of the validation images, computed into an empty
    cache, then every epoch of training.
    Validation accuracy is read after each epoch (``fit`` computes it anyway).
    """
    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=n_classes)
    size = profile.image_size
    eval_tf = Compose((ResizePad(size, pad_colour(backbone.data_config)),
                       make_transform(backbone, input_size=(3, size, size), crop_pct=1.0)))
    config = top_config(profile, seed)
    run = AccuracyRun("finetune_top (library default)", threshold,
                      notes={"backbone": backbone.name, "profile": profile.name, "image_size": size,
                             "epochs": config.epochs, "batch_size": config.batch_size,
                             "train_views": list(TRAIN_VIEWS), "n_train": len(splits["train"]),
                             "n_val": len(splits["val"])})
    needed = {"train": splits["train"], "val": splits["val"]}  # test activations play no part in val accuracy
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as cache:
        start = time.perf_counter()
        frozen = FrozenTrunk(backbone, cut_at(backbone, top_stages), eval_tf, device, cache_dir=Path(cache),
                             batch_size=profile.batch_size)
        for view in TRAIN_VIEWS:
            frozen.activations(needed["train"], view)
        frozen.activations(needed["val"])
        cached = time.perf_counter() - start
        epochs_done = [0]

        def score(y: np.ndarray, pred: np.ndarray) -> float:  # fit calls this once per epoch, after validation
            accuracy = float((y == pred).mean())
            epochs_done[0] += 1
            run.record(time.perf_counter() - start, epochs_done[0], accuracy)
            return accuracy

        finetune_top(frozen, needed, config, n_classes=n_classes, train_views=TRAIN_VIEWS, score=score,
                     progress=progress)
        run.stopped_at_s = time.perf_counter() - start
    n_cached = len(TRAIN_VIEWS) * len(needed["train"]) + len(needed["val"])
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


def _recipe_transforms(data_config: dict, image_size: int) -> tuple[transforms.Compose, transforms.Compose]:
    """The tutorial's training (random resized crop + flip) and validation (resize + centre crop) transforms,
    normalised with the backbone's own mean and std."""
    mean, std = data_config["mean"], data_config["std"]
    resize = round(image_size * 256 / 224)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    eval_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), transforms.Normalize(mean, std)])
    return train_tf, eval_tf


class _RecipeLoop:
    """The tutorial's training loop on a pausable clock: SGD + StepLR, validated after every epoch (charged)
    and ``checks_per_epoch - 1`` times within it (not charged); it records into ``run``."""

    def __init__(self, model: nn.Module, train_loader: DataLoader, val_data: ImageDataset, device: torch.device,
                 run: AccuracyRun, *, budget_s: float, checks_per_epoch: int, batch_size: int,
                 progress: bool) -> None:
        self.model, self.train_loader, self.val_data, self.device = model, train_loader, val_data, device
        self.run = run
        self.budget_s, self.batch_size, self.progress = budget_s, batch_size, progress
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=7, gamma=0.1)
        n_batches = len(train_loader)
        self.checkpoints = ({max(1, round(n_batches * k / checks_per_epoch)) for k in range(1, checks_per_epoch)}
                            - {n_batches})
        self.images_trained = 0
        self.clock = _Clock()  # starts now: the loop runs next

    @torch.no_grad()
    def val_accuracy(self, eval_batch: int) -> float:
        """Accuracy on the validation split, in batches of ``eval_batch``."""
        self.model.eval()
        correct = 0
        for x, y in DataLoader(self.val_data, batch_size=eval_batch):
            correct += int((self.model(x.to(self.device)).argmax(1).cpu() == y).sum())
        self.model.train()
        return correct / len(self.val_data)

    def epoch(self, epoch: int) -> bool:
        """Train one epoch with its extra checks; True if it stopped early (threshold reached or over budget)."""
        self.model.train()
        n_batches = len(self.train_loader)
        bar = tqdm(self.train_loader, desc=f"recipe epoch {epoch + 1}", leave=False, disable=not self.progress)
        for i, (x, y) in enumerate(bar, 1):
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.images_trained += len(y)
            if i in self.checkpoints:
                now = self.clock()
                with self.clock.pause():
                    self.run.record(now, epoch + i / n_batches, self.val_accuracy(eval_batch=64))  # extra check
                if self.run.reached:
                    return True
            if self.clock() > self.budget_s:
                return True
        return False

    def train(self, max_epochs: int) -> None:
        """Epochs until the threshold, the budget or ``max_epochs``; then the run's end time and notes."""
        for epoch in range(max_epochs):
            if self.epoch(epoch):
                break
            self.scheduler.step()
            accuracy = self.val_accuracy(eval_batch=self.batch_size)  # the tutorial's own validation: charged
            self.run.record(self.clock(), epoch + 1, accuracy)
            if self.progress:
                print(f"recipe epoch {epoch + 1}: val acc {accuracy:.3f} at {self.clock():.0f} s")
            if self.run.reached or self.clock() > self.budget_s:
                break
        self.run.stopped_at_s = self.clock()
        self.run.notes.update({"images_trained": self.images_trained,
                               "paused_for_extra_checks_s": round(self.clock.paused, 2),
                               "train_images_per_s": round(self.images_trained / max(self.run.stopped_at_s, 1e-9),
                                                           2)})


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
    seed_everything(seed)
    backbone = load_backbone(backbone_name, num_classes=n_classes)
    model = backbone.model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    train_tf, eval_tf = _recipe_transforms(backbone.data_config, image_size)
    train_loader = DataLoader(ImageDataset(splits["train"], train_tf), batch_size=batch_size, shuffle=True,
                              generator=make_generator(seed))
    run = AccuracyRun("tutorial recipe (whole network)", threshold, budget_s=budget_s,
                      notes={"backbone": backbone.name, "image_size": image_size, "batch_size": batch_size,
                             "checks_per_epoch": checks_per_epoch, "n_train": len(splits["train"]),
                             "n_val": len(splits["val"])})
    loop = _RecipeLoop(model, train_loader, ImageDataset(splits["val"], eval_tf), device, run, budget_s=budget_s,
                       checks_per_epoch=checks_per_epoch, batch_size=batch_size, progress=progress)
    loop.train(max_epochs)
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
