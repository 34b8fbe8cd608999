"""Long training jobs from the command line: the notebooks' recipe as one function.

``python -m tutorial_lib train ...`` calls :func:`train_job`, plainly or under ``torchrun``
(see :mod:`tutorial_lib.distributed`). It loads the data (a prepared folder, a registry
name or your own folder), the backbone and its preprocessing, runs one of the notebooks'
strategies through :func:`tutorial_lib.train.fit`, and (rank 0) writes a results JSON.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .data import REGISTRY, ClassificationData

STRATEGIES = ("finetune_full", "finetune_top")


def load_training_data(data: str, *, source: str | None = None, image_size: int = 224,
                       seed: int = 0) -> ClassificationData:
    """A prepared folder, a registry name (its prepared cache at ``image_size`` if there is one), or your data."""
    from .data import load_dataset
    from .prepare import is_prepared, load_prepared, prepared_dir

    if is_prepared(data):
        return load_prepared(data)
    if data in REGISTRY and is_prepared(prepared_dir(data, image_size)):
        return load_prepared(prepared_dir(data, image_size))
    return load_dataset(data, folder=source, seed=seed)


def train_job(data: str, *, backbone: str = "auto", strategy: str = "finetune_full", epochs: int = 1,
              batch_size: int = 64, accumulate: int = 1, image_size: int = 224, checkpoint: str | None = None,
              results: str | None = None, seed: int = 0, device: str = "auto", amp: bool | None = None,
              amp_dtype: str = "bfloat16", channels_last: bool | None = None, max_images: int | None = None,
              num_workers: int | None = None, lr_head: float = 1e-3, lr_backbone: float = 1e-4,
              source: str | None = None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train ``backbone`` on ``data`` with ``strategy``; return (and on rank 0 write to ``results``) a summary.

    ``amp`` and ``channels_last`` default to on for CUDA, off elsewhere. ``batch_size`` is
    the global batch per optimizer step, whatever the number of processes.
    ``train_images_per_second`` in the summary counts each epoch's validation pass in its time.
    A ``checkpoint`` file that is not this run's is refused unless ``overwrite``.
    """
    import numpy as np

    from . import distributed
    from .env import default_num_workers, seed_everything
    from .metrics import classification_metrics
    from .models import load_backbone, make_transform
    from .train import (CheckpointError, FrozenTrunk, TrainConfig, finetune_full, finetune_top, limit_split,
                        read_own_checkpoint, top_stages)

    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    existing = "overwrite" if overwrite else "refuse"
    if checkpoint and (Path(checkpoint).exists() or Path(checkpoint).is_dir()):  # refuse a wrong file before any work
        _, problem = read_own_checkpoint(Path(checkpoint))
        if problem and not overwrite:
            raise CheckpointError(f"{problem}; it was left untouched. Pass another --checkpoint path, or --overwrite "
                                  "to replace it.")
    ctx, dev = distributed.init_from_env(device)
    try:
        dataset = load_training_data(data, source=source, image_size=image_size, seed=seed)
        splits = {name: limit_split(split, max_images, seed) for name, split in dataset.splits.items()}
        n_classes = len(dataset.classes)
        seed_everything(seed)  # the new head's initial weights (DDP then copies rank 0's to every rank)
        net = load_backbone(backbone, num_classes=n_classes)
        size = {"input_size": (3, image_size, image_size)}
        eval_tf = make_transform(net, **size)
        on_gpu = dev.type == "cuda"
        config = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr_head=lr_head, lr_backbone=lr_backbone,
            num_workers=default_num_workers() if num_workers is None else num_workers,
            amp=on_gpu if amp is None else amp, amp_dtype=amp_dtype,
            channels_last=on_gpu if channels_last is None else channels_last, seed=seed, accumulate_steps=accumulate)
        started = time.perf_counter()
        if strategy == "finetune_full":
            result = finetune_full(net, splits, make_transform(net, train=True, **size), eval_tf, dev, config,
                                   checkpoint=Path(checkpoint) if checkpoint else None, progress=progress,
                                   n_classes=n_classes, existing=existing)
        else:
            cache = Path(checkpoint).parent / "activations" if checkpoint else None
            frozen = FrozenTrunk(net, top_stages(net, 2), eval_tf, dev, cache_dir=cache)
            result = finetune_top(frozen, splits, config, n_classes=n_classes,
                                  checkpoint=Path(checkpoint) if checkpoint else None, progress=progress,
                                  existing=existing)
        seconds = time.perf_counter() - started
        ordinal = dataset.info is not None and dataset.info.task == "dr"
        metrics = {split: classification_metrics(splits[split].labels, np.asarray(probs).argmax(1), ordinal=ordinal)
                   for split, probs in result.probs.items() if split in ("val", "test")}
        train_seconds = float(result.history["seconds"].sum()) if len(result.history) else 0.0
        images = len(result.history) * (config.samples_per_epoch or len(splits["train"]))
        summary = {"data": data, "dataset": dataset.name, "classes": list(dataset.classes),
                   "split_note": dataset.split_note, "sizes": {k: len(v) for k, v in splits.items()},
                   "backbone": net.name, "strategy": strategy, "image_size": image_size, "device": str(dev),
                   "world_size": ctx.world_size, "config": asdict(config), "metrics": metrics,
                   "history": result.history.to_dict(orient="records"), "seconds": round(seconds, 2),
                   "train_images_per_second": round(images / train_seconds, 2) if train_seconds else None}
        if ctx.is_main and results:
            from .report import atomic_write_text

            atomic_write_text(Path(results), json.dumps(summary, indent=1, default=str))
        return summary
    finally:
        distributed.shutdown()
