"""Transfer-learning strategies behind notebooks 03-04, and the classifier's training step.

Three strategies, the same functions for every backbone:

- ``linear_probe``: the pretrained network is frozen; its pooled features are
  extracted once (cached on disk) and a linear classifier is fitted on them.
- ``finetune_top``: the last stages and a new head are trained, the rest frozen.
  The frozen trunk's activations (:class:`tutorial_lib.frozen.FrozenTrunk`) are computed
  once per view and re-used every epoch, so many epochs cost seconds on a CPU.
- ``finetune_full``: everything is trained end to end on augmented images, with a
  lower learning rate for the pretrained layers than for the head, warm-up then
  cosine decay, and a class-balanced loss.

Each trains with :func:`fit_classifier`, which gives the one loop of
:func:`tutorial_lib.loop.fit` a classifier's step (cross-entropy) and evaluation
(validation accuracy and score). Plotting lives in :mod:`tutorial_lib.plots`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from . import distributed
from ._io import fingerprint
from .checkpoint import RunCheckpoint, run_key
from .data import ImageDataset, ImageSplit
from .env import autocast, explains_out_of_memory, grad_scaler, make_generator, resolve_precision, seed_everything, seed_worker
from .frozen import FrozenTrunk, split_model
from .loop import fit, optimizer_and_schedule
from .models import Backbone
from .profiles import Profile

# --------------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int
    batch_size: int = 64  # images per optimizer step
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4  # pretrained layers learn slower than the new head
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_balanced: bool = True  # weight the loss by inverse class frequency
    aux_weight: float = 0.3  # GoogLeNet's auxiliary classifiers, when present
    samples_per_epoch: int | None = None  # a random subset per epoch (None: the whole training set)
    num_workers: int = 0
    precision: str = "float32"  # tutorial_lib.env.PRECISIONS; "float16" adds a gradient scaler (CUDA)
    channels_last: bool = False
    seed: int = 0
    accumulate_steps: int = 1  # micro-batches per optimizer step; batch_size stays the images per step


def top_config(profile: Profile, seed: int = 0) -> TrainConfig:
    """The settings of ``finetune_top`` in notebooks 03 and 04 (and the benchmarks).

    The head learns at 1e-3, the pretrained stages at 5e-4; bfloat16 mixed precision where the
    hardware computes it natively (the activations it trains on are cached in 16 bits anyway).
    """
    return TrainConfig(epochs=profile.epochs, batch_size=64, lr_head=1e-3, lr_backbone=5e-4, weight_decay=1e-2,
                       precision="auto", seed=seed)


def full_config(profile: Profile, device: torch.device, seed: int = 0, num_workers: int = 0) -> TrainConfig:
    """The settings of ``finetune_full`` in notebooks 03 and 04: a low learning rate for a network already fine."""
    return TrainConfig(epochs=profile.full_epochs, batch_size=32 if device.type == "cpu" else 64, lr_head=1e-4,
                       lr_backbone=1e-5 if profile.name != "full" else 1e-4, weight_decay=1e-2,
                       warmup_epochs=min(1.0, profile.full_epochs / 2), samples_per_epoch=profile.full_train_images,
                       num_workers=num_workers, precision=profile.precision, channels_last=profile.channels_last,
                       seed=seed)


def limit_split(split: ImageSplit, max_images: int | None, seed: int) -> ImageSplit:
    """A stratified random sample of at most ``max_images`` images (the whole split if ``None``)."""
    if max_images is None or len(split) <= max_images:
        return split
    if max_images < 1:
        raise ValueError(f"max_images (--max-images) must be at least 1, got {max_images}.")
    from .data import stratified_split

    keep, _ = stratified_split(np.arange(len(split)), split.labels, len(split) - max_images, seed)
    return split.subset(keep)


# --------------------------------------------------------------------------- the classifier's step and evaluation


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") class weights, averaging 1 over the samples; 0 for an absent class."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = np.zeros(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels) * (len(present) / n_classes)
    return torch.tensor(weights, dtype=torch.float32)


def dataset_labels(data: Dataset) -> np.ndarray:
    """The integer labels of a dataset of ``(x, y)`` pairs, without decoding any image."""
    if isinstance(data, ImageDataset):
        return np.asarray(data.split.labels)
    if isinstance(data, TensorDataset):
        return data.tensors[1].numpy()
    return np.array([int(data[i][1]) for i in range(len(data))])


def dataset_fingerprint(data: Dataset) -> str:
    """A hash of a dataset's content: its images (files by path, size and time) or tensors, labels, transform."""
    if isinstance(data, ImageDataset):
        return fingerprint(data.split.images, data.split.labels, repr(data.transform), files="stat")
    if isinstance(data, TensorDataset):
        return fingerprint(*data.tensors)
    return fingerprint(type(data).__name__, len(data), dataset_labels(data))


def logits_of(output: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits (GoogLeNet in training mode returns a namedtuple)."""
    if isinstance(output, torch.Tensor):
        return output, []
    aux = [t for t in (getattr(output, "aux_logits2", None), getattr(output, "aux_logits1", None)) if t is not None]
    return output.logits, aux


def as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32: cached activations are stored in float16 and cast one batch at a time."""
    x = x.to(device, non_blocking=True)
    return x.float() if x.is_floating_point() else x


@torch.no_grad()
def predict_proba(model: nn.Module, data: Dataset, device: torch.device, *, batch_size: int = 128,
                  num_workers: int = 0, precision: str = "float32", channels_last: bool = False) -> np.ndarray:
    """Class probabilities ``(N, n_classes)`` for a dataset of ``(x, y)`` pairs."""
    model = model.to(device).eval()
    precision = resolve_precision(precision, device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=seed_worker)
    probs = []
    for x, _ in loader:
        x = as_input(x, device)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits, _ = logits_of(model(x))
        probs.append(logits.float().softmax(dim=-1).cpu())
    return torch.cat(probs).numpy()


def classifier_step(model: nn.Module, config: TrainConfig, device: torch.device,
                    weight: torch.Tensor | None) -> Callable:
    """``step((x, y, micro)) -> (loss, sums)``: class-weighted, label-smoothed cross-entropy (plus GoogLeNet's
    auxiliary heads). ``micro`` is ``None`` for a whole batch, else a micro-batch of :mod:`tutorial_lib.distributed`."""
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    per_item = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing, reduction="none")

    def step(batch: tuple[torch.Tensor, torch.Tensor, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x, y, micro = batch
        x, y = as_input(x, device), y.to(device, non_blocking=True)
        if config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, config.precision):
            logits, aux = logits_of(model(x))
            loss_fn = criterion if micro is None else per_item
            loss = loss_fn(logits.float(), y)
            for a in aux:
                loss = loss + config.aux_weight * loss_fn(a.float(), y)
            if micro is not None:  # this micro-batch's share of the global batch's mean loss
                loss = distributed.micro_loss(loss, micro)
        real = len(y) if micro is None else micro.real
        return loss, {"loss_sum": float(loss.detach()) * (len(y) if micro is None else micro.count),
                      "correct": int((logits[:real].argmax(1) == y[:real]).sum()), "count": real}

    return step


def plain_steps(train_data: Dataset, config: TrainConfig, device: torch.device) -> Callable:
    """``steps(epoch)``: shuffled batches of one process, one batch per optimizer step."""
    def steps(epoch: int) -> tuple[Any, int]:
        generator = make_generator(config.seed * 10_000 + epoch)  # per epoch: a resumed run sees the same batches
        sampler = RandomSampler(train_data, num_samples=config.samples_per_epoch, generator=generator)
        loader = DataLoader(train_data, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                            worker_init_fn=seed_worker, generator=generator, pin_memory=device.type == "cuda")
        return ([(x, y, None)] for x, y in loader), len(loader)

    return steps


def classifier_evaluation(model: nn.Module, val_data: Dataset, config: TrainConfig, device: torch.device,
                          score: Callable[[np.ndarray, np.ndarray], float], ctx: distributed.DistContext) -> Callable:
    """``evaluate(sums)``: the epoch's training loss and accuracy, and validation accuracy and ``score``."""
    val_labels = dataset_labels(val_data)

    def predict(data: Dataset) -> np.ndarray:
        return predict_proba(model, data, device, batch_size=max(config.batch_size, 128),
                             num_workers=config.num_workers, precision=config.precision,
                             channels_last=config.channels_last)

    def evaluate(sums: dict[str, float]) -> dict[str, float]:
        loss_sum, correct, total = distributed.all_reduce_sum([sums["loss_sum"], sums["correct"], sums["count"]],
                                                              ctx, device)
        val_pred = distributed.gather_predictions(predict, val_data, ctx).argmax(1)  # sharded over the ranks
        return {"train_loss": loss_sum / total, "train_accuracy": correct / total,
                "val_accuracy": float((val_pred == val_labels).mean()), "val_score": score(val_labels, val_pred)}

    return evaluate


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """The share of predictions that are right: the default validation score."""
    return float((y == pred).mean())


@explains_out_of_memory
def fit_classifier(model: nn.Module, train_data: Dataset, val_data: Dataset, config: TrainConfig,
                   device: torch.device, *, head_prefixes: Sequence[str] = (), n_classes: int,
                   train_labels: np.ndarray | None = None, checkpoint: Path | None = None,
                   score: Callable[[np.ndarray, np.ndarray], float] | None = None, stop_after_epoch: int | None = None,
                   progress: bool = True, existing: str = "backup") -> pd.DataFrame:
    """Train a classifier with :func:`tutorial_lib.loop.fit` and return its history (one row per epoch).

    ``head_prefixes`` name the new layers (they learn at ``lr_head``, the rest at ``lr_backbone``).
    With ``checkpoint``, an interrupted run resumes where it stopped and ends with the same weights;
    a file there that is not this run's checkpoint is handled by ``existing``
    (:mod:`tutorial_lib.checkpoint`). The weights of the epoch with the best validation ``score``
    (default: accuracy) are loaded back at the end. Under ``torchrun``, or with
    ``config.accumulate_steps > 1``, the same call trains on micro-batches of the same global
    batches (:mod:`tutorial_lib.distributed`), so the result matches a single-process run.
    """
    ctx = distributed.context()  # rank 0 of 1 unless started by torchrun
    seed_everything(config.seed + ctx.rank)  # rank 0 as a single process; DDP gives every rank rank 0's weights
    config = replace(config, precision=resolve_precision(config.precision, device))
    model = model.to(device, memory_format=torch.channels_last) if config.channels_last else model.to(device)
    optimizer, scheduler = optimizer_and_schedule(
        model, head_prefixes, lr_head=config.lr_head, lr_backbone=config.lr_backbone, weight_decay=config.weight_decay,
        epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        steps_per_epoch=math.ceil((config.samples_per_epoch or len(train_data)) / config.batch_size))
    weight = class_weights(train_labels, n_classes).to(device) \
        if config.class_balanced and train_labels is not None else None
    distributed.micro_batch_size(config.batch_size, ctx.world_size, config.accumulate_steps)  # checks the split
    if ctx.enabled or config.accumulate_steps > 1:  # this rank's micro-batches of the same global batches
        labels = None if weight is None else (train_labels if train_labels is not None else dataset_labels(train_data))
        steps = distributed.planned_steps(train_data, config, device, ctx, labels=labels, weight=weight)
    else:
        steps = plain_steps(train_data, config, device)
    saved = None if checkpoint is None else RunCheckpoint(checkpoint, run_key(
        {k: v for k, v in asdict(config).items() if k != "accumulate_steps"},  # accumulation changes no result
        fingerprint(dataset_fingerprint(train_data), dataset_fingerprint(val_data)), model), existing=existing, ctx=ctx)
    train_model = distributed.wrap(model, device, ctx)  # DDP under torchrun, else the model itself
    return fit(model, optimizer, scheduler, epochs=config.epochs, steps=steps,
               step=classifier_step(train_model, config, device, weight),
               evaluate=classifier_evaluation(model, val_data, config, device, score or accuracy, ctx),
               checkpoint=saved, scaler=grad_scaler(device, config.precision),
               sync=lambda last: distributed.sync_gradients(train_model, last), progress=progress and ctx.is_main,
               stop_after_epoch=stop_after_epoch)


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
    score = score or accuracy

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
                 progress: bool = True, existing: str = "backup") -> StrategyResult:
    """Train the stages from ``frozen.cut`` up, and the head, on cached activations of the frozen trunk.

    ``config.precision`` is the precision of training (``"auto"``: bfloat16 mixed precision where
    the hardware computes it natively; weights, optimizer and loss stay float32).

    The training set holds every image in each of ``train_views`` (free augmentation:
    the activations of each view are cached once). Validation and test probabilities are
    averaged over ``eval_views`` (test-time augmentation). The trained layers are shared
    with ``backbone.model``, so a later :func:`finetune_full` starts from them.
    """
    started = time.perf_counter()
    _, top = split_model(frozen.backbone, frozen.cut)

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:  # float16 as cached: half the memory of float32
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64)))

    views = [frozen.activations(splits["train"], v) for v in train_views]
    train_x = views[0] if len(views) == 1 else np.concatenate(views)
    train_y = np.tile(splits["train"].labels, len(train_views))
    val_x = frozen.activations(splits["val"])
    head = str(len(top) - 1)  # the classifier is the top's last module
    top_config = replace(config, num_workers=0, channels_last=False,
                         precision=resolve_precision(config.precision, frozen.device))
    history = fit_classifier(top, tensors(train_x, train_y), tensors(val_x, splits["val"].labels), top_config,
                  frozen.device, head_prefixes=[head], n_classes=n_classes, train_labels=train_y,
                  checkpoint=checkpoint, score=score, progress=progress, existing=existing)
    probs = {split: np.mean([predict_proba(top, tensors(frozen.activations(data, v), data.labels), frozen.device)
                             for v in (("identity",) if split == "train" else eval_views)], axis=0)
             for split, data in splits.items()}
    return StrategyResult("finetune_top", probs, history, model=top, seconds=time.perf_counter() - started,
                          notes={"trained_from": frozen.cut, "activation_shape": list(val_x.shape[1:]),
                                 "precision": top_config.precision,
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
    history = fit_classifier(model, train, ImageDataset(splits["val"], eval_transform), config, device, head_prefixes=heads,
                  n_classes=n_classes, train_labels=splits["train"].labels, checkpoint=checkpoint, score=score,
                  progress=progress, existing=existing)
    probs = {split: predict_proba(model, ImageDataset(splits[split], eval_transform), device,
                                  batch_size=max(128, config.batch_size), num_workers=config.num_workers,
                                  precision=config.precision, channels_last=config.channels_last)
             for split in ("val", "test")}  # the training split is not re-scored: it costs a full pass on a CPU
    images_seen = config.epochs * (config.samples_per_epoch or len(splits["train"]))
    return StrategyResult("finetune_full", probs, history, model=model, seconds=time.perf_counter() - started,
                          notes={"epochs": config.epochs, "images_seen": images_seen})
