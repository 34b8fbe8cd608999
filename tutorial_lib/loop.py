"""The training loop: one ``fit`` for every network the tutorial trains.

``fit`` is plain PyTorch. What differs between a classifier and a tagger is passed in as
three small functions (the split between a *step* and the *loop* that Lightning and
nanoGPT use):

- ``steps(epoch)``: the epoch's optimizer steps, each a list of batches (one batch, unless
  gradients are accumulated over micro-batches), and how many steps there are;
- ``step(batch)``: the forward pass, returning the loss and a few sums to report
  (e.g. ``{"loss_sum": ..., "correct": ..., "count": ...}``);
- ``evaluate(sums)``: the epoch's row of the history from the training sums and a pass over the
  validation data; it must hold ``"val_score"``, by which the best epoch is chosen.

Optimizer and schedule: AdamW with two learning rates (the new layers learn faster than the
pretrained ones), no weight decay on biases and normalisation weights, linear warm-up then
cosine decay (:func:`optimizer_and_schedule`).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from .checkpoint import RunCheckpoint

Batch = Any
Step = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, epochs: int,
        steps: Callable[[int], tuple[Iterable[list[Batch]], int]], step: Step, evaluate: Callable[[dict[str, float]], dict],
        checkpoint: RunCheckpoint | None = None, scaler: torch.amp.GradScaler | None = None,
        sync: Callable[[bool], Any] = lambda last: contextlib.nullcontext(), progress: bool = True,
        stop_after_epoch: int | None = None) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` and return its history, one row per epoch.

    After training, the weights of the epoch with the best ``val_score`` are loaded back. With
    ``checkpoint`` the state is saved after every epoch and an interrupted run resumes where it
    stopped, ending with the same weights. ``scaler`` scales float16 losses; ``sync(last)`` lets
    DDP skip the gradient all-reduce on all but the last micro-batch of a step.
    ``stop_after_epoch`` simulates an interruption (for tests).
    """
    from .progress import tqdm

    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    history, best, start = ([], {"score": -math.inf, "state": None}, 0) if checkpoint is None else \
        checkpoint.resume(epochs, model, optimizer, scheduler, scaler)
    for epoch in range(start, epochs):
        started = time.perf_counter()
        model.train()
        sums: Counter = Counter()
        batches, n_steps = steps(epoch)
        for micro_batches in tqdm(batches, total=n_steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                                  disable=not progress):
            optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(micro_batches):
                with sync(i == len(micro_batches) - 1):
                    loss, batch_sums = step(batch)
                    scaler.scale(loss).backward()
                sums.update(batch_sums)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        row = {"epoch": epoch + 1, **evaluate(dict(sums)), "lr": optimizer.param_groups[0]["lr"]}
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if row["val_score"] > best["score"]:
            best = {"score": row["val_score"], "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        if progress:
            print(describe_epoch(row, epochs))
        if checkpoint is not None:
            checkpoint.save(epoch, model, optimizer, scheduler, scaler, history, best)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if best["state"] is not None and (stop_after_epoch is None or stop_after_epoch >= epochs):
        model.load_state_dict(best["state"])
    return pd.DataFrame(history)


def describe_epoch(row: dict[str, Any], epochs: int) -> str:
    """One printed line per epoch: ``epoch  3/8  train_loss 0.912  ...  (1.2 s)``."""
    same = row.get("val_score") == row.get("val_accuracy")  # the score is the accuracy: shown once
    shown = "  ".join(f"{k} {v:.3f}" for k, v in row.items()
                      if k not in ("epoch", "lr", "seconds") and not (same and k == "val_score"))
    return f"epoch {row['epoch']:>2}/{epochs}  {shown}  ({row['seconds']:.1f} s)"


def param_groups(model: nn.Module, head_prefixes: Sequence[str], lr_head: float, lr_backbone: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: parameters under ``head_prefixes`` get ``lr_head``, the rest ``lr_backbone``.

    Within each, timm's ``param_groups_weight_decay`` exempts biases and normalisation weights
    (parameters of one dimension) from weight decay.
    """
    from timm.optim import param_groups_weight_decay

    def is_head(name: str) -> bool:
        return any(name == p or name.startswith(f"{p}.") for p in head_prefixes)

    groups = []
    for head, lr in ((False, lr_backbone), (True, lr_head)):
        part = _Parameters([(n, p) for n, p in model.named_parameters() if is_head(n) == head])
        groups += [{**group, "lr": lr} for group in param_groups_weight_decay(part, weight_decay) if group["params"]]
    return groups


class _Parameters:
    """A subset of a model's named parameters, in the shape ``param_groups_weight_decay`` reads."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]) -> None:
        self.named = named

    def named_parameters(self):
        return iter(self.named)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's learning rate, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_and_schedule(model: nn.Module, head_prefixes: Sequence[str], *, lr_head: float, lr_backbone: float,
                           weight_decay: float, epochs: int, steps_per_epoch: int, warmup_epochs: float
                           ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`param_groups`, with :func:`warmup_cosine` over ``epochs * steps_per_epoch`` steps."""
    optimizer = torch.optim.AdamW(param_groups(model, head_prefixes, lr_head, lr_backbone, weight_decay))
    return optimizer, warmup_cosine(optimizer, epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch))
