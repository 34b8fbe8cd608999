"""Long training jobs from the command line: the notebooks' recipe as one function.

``python -m tutorial_lib train ...`` calls :func:`train_job`, plainly or under ``torchrun``
(see :mod:`tutorial_lib.distributed`). It loads the data (a prepared folder, a registry
name or your own folder), the backbone and its preprocessing, runs one of the notebooks'
strategies through :func:`tutorial_lib.train.fit_classifier`, and (rank 0) writes a results JSON.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from .._io import atomic_write_text
from ..data import REGISTRY, ClassificationData, ImageSplit, load_dataset
from ..checkpoint import CheckpointError, read_own_checkpoint
from ..env import default_num_workers, seed_everything
from ..frozen import FrozenTrunk, cut_before_last
from ..metrics import classification_metrics
from ..models import Backbone, load_backbone, make_transform
from ..train import TrainConfig, finetune_full, finetune_top, limit_split
from .prepare import is_prepared, load_prepared, prepared_dir

STRATEGIES = ("finetune_full", "finetune_top")


def load_training_data(data: str, *, source: str | None = None, image_size: int = 224,
                       seed: int = 0) -> ClassificationData:
    """A prepared folder, a registry name (its prepared cache at ``image_size`` if there is one), or your data."""
    if is_prepared(data):
        return load_prepared(data)
    if data in REGISTRY and is_prepared(prepared_dir(data, image_size)):
        return load_prepared(prepared_dir(data, image_size))
    return load_dataset(data, folder=source, seed=seed)


def _refuse_foreign_checkpoint(checkpoint: Path, overwrite: bool) -> None:
    """Raise :class:`~tutorial_lib.train.CheckpointError` for a checkpoint file that is not this run's, before any
    work, unless ``overwrite``."""
    if checkpoint.exists():
        _, problem = read_own_checkpoint(checkpoint)
        if problem and not overwrite:
            raise CheckpointError(f"{problem}; it was left untouched. Pass another --checkpoint path, or --overwrite "
                                  "to replace it.")


def _run_strategy(strategy: str, net: Backbone, splits: dict[str, ImageSplit], eval_tf: Any, dev: torch.device,
                  config: TrainConfig, *, image_size: int, checkpoint: Path | None, progress: bool, n_classes: int,
                  existing: str) -> Any:
    """``finetune_full`` or ``finetune_top`` (the last two stages; activations cached beside the checkpoint)."""
    if strategy == "finetune_full":
        train_tf = make_transform(net, train=True, input_size=(3, image_size, image_size))
        return finetune_full(net, splits, train_tf, eval_tf, dev, config, checkpoint=checkpoint, progress=progress,
                             n_classes=n_classes, existing=existing)
    cache = checkpoint.parent / "activations" if checkpoint else None
    frozen = FrozenTrunk(net, cut_before_last(net, 2), eval_tf, dev, cache_dir=cache)
    return finetune_top(frozen, splits, config, n_classes=n_classes, checkpoint=checkpoint, progress=progress,
                        existing=existing)


def _summary(data: str, dataset: ClassificationData, splits: dict[str, ImageSplit], net: Backbone, strategy: str,
             image_size: int, dev: torch.device, world_size: int, config: TrainConfig, result: Any,
             seconds: float) -> dict[str, Any]:
    """What the job writes to its results file: the data, the settings, val/test metrics, history and speed."""
    ordinal = dataset.info is not None and dataset.info.task == "dr"
    metrics = {split: classification_metrics(splits[split].labels, np.asarray(probs).argmax(1), ordinal=ordinal)
               for split, probs in result.probs.items() if split in ("val", "test")}
    train_seconds = float(result.history["seconds"].sum()) if len(result.history) else 0.0
    images = len(result.history) * (config.samples_per_epoch or len(splits["train"]))
    return {"data": data, "dataset": dataset.name, "classes": list(dataset.classes),
            "split_note": dataset.split_note, "sizes": {k: len(v) for k, v in splits.items()},
            "backbone": net.name, "strategy": strategy, "image_size": image_size, "device": str(dev),
            "world_size": world_size, "config": asdict(config), "metrics": metrics,
            "history": result.history.to_dict(orient="records"), "seconds": round(seconds, 2),
            "train_images_per_second": round(images / train_seconds, 2) if train_seconds else None}


def train_job(data: str, *, backbone: str = "auto", strategy: str = "finetune_full", epochs: int = 1,
              batch_size: int = 64, accumulate: int = 1, image_size: int = 224, checkpoint: str | None = None,
              results: str | None = None, seed: int = 0, device: str = "auto", precision: str | None = None,
              channels_last: bool | None = None, max_images: int | None = None,
              num_workers: int | None = None, lr_head: float = 1e-3, lr_backbone: float = 1e-4,
              source: str | None = None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train ``backbone`` on ``data`` with ``strategy``; return (and on rank 0 write to ``results``) a summary.

    ``precision`` defaults to ``"auto"`` on CUDA and ``"float32"`` elsewhere, ``channels_last`` to on for
    CUDA only. ``batch_size`` is
    the global batch per optimizer step, whatever the number of processes.
    ``train_images_per_second`` in the summary counts each epoch's validation pass in its time.
    A ``checkpoint`` file that is not this run's is refused unless ``overwrite``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    checkpoint_path = Path(checkpoint) if checkpoint else None
    if checkpoint_path is not None:
        _refuse_foreign_checkpoint(checkpoint_path, overwrite)
    ctx, dev = distributed.init_from_env(device)
    try:
        dataset = load_training_data(data, source=source, image_size=image_size, seed=seed)
        splits = {name: limit_split(split, max_images, seed) for name, split in dataset.splits.items()}
        n_classes = len(dataset.classes)
        seed_everything(seed)  # the new head's initial weights (DDP then copies rank 0's to every rank)
        net = load_backbone(backbone, num_classes=n_classes)
        eval_tf = make_transform(net, input_size=(3, image_size, image_size))
        on_gpu = dev.type == "cuda"
        config = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr_head=lr_head, lr_backbone=lr_backbone,
            num_workers=default_num_workers() if num_workers is None else num_workers,
            precision=("auto" if on_gpu else "float32") if precision is None else precision,
            channels_last=on_gpu if channels_last is None else channels_last, seed=seed, accumulate_steps=accumulate)
        started = time.perf_counter()
        result = _run_strategy(strategy, net, splits, eval_tf, dev, config, image_size=image_size,
                               checkpoint=checkpoint_path, progress=progress, n_classes=n_classes,
                               existing="overwrite" if overwrite else "refuse")
        summary = _summary(data, dataset, splits, net, strategy, image_size, dev, ctx.world_size, config, result,
                           time.perf_counter() - started)
        if ctx.is_main and results:
            atomic_write_text(Path(results), json.dumps(summary, indent=1, default=str))
        return summary
    finally:
        distributed.shutdown()
