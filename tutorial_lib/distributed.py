"""Data-parallel training with PyTorch DDP, launched by ``torchrun``; gradient accumulation.

Introduced for the scale-out part of notebooks 03-04 (README: "From the CPU demo to
multi-GPU on the full data"). :func:`tutorial_lib.train.fit_classifier` calls these helpers, so the
same training functions run in a notebook, in a plain script and under::

    torchrun --nproc_per_node 4 -m tutorial_lib train --data eyepacs_224 ...

Definitions that make the runs comparable:

- ``TrainConfig.batch_size`` is the **global** batch of one optimizer step. With
  ``W`` processes and ``K`` accumulation steps each process sees micro-batches of
  ``batch_size / (W * K)`` images.
- Every process draws the same epoch order as a single-process :func:`~tutorial_lib.train.fit_classifier` would
  (:func:`epoch_order`) and takes its contiguous share of each global batch
  (:func:`plan_epoch`). We do not use ``DistributedSampler``: it draws its own
  permutation and pads the last batch, so a 2-process run would see other batches
  than a 1-process run and could not be checked against it.
- Each micro-batch's loss is a sum divided by the global batch's total (class-weighted)
  count, times ``W`` (DDP averages gradients over processes), so the accumulated
  gradient is exactly the single-process mean. Float rounding is the only difference
  for models without batch statistics or randomness; BatchNorm statistics, dropout and
  augmentation are per process (and per micro-batch) by design.
- Rank ``r`` seeds with ``seed + r`` (dropout, augmentation, DataLoader workers);
  the initial weights are rank 0's (DDP broadcasts them when it wraps the model).
- Only rank 0 writes checkpoints and results; validation is sharded across processes
  and the predictions gathered, so every rank picks the same best epoch.

Nothing happens on import; :func:`init_from_env` starts the process group.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes (0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, writes checkpoints and results."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context() -> DistContext:
    """The current process's rank and world size (``DistContext()`` when no process group is running)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_from_env(device_preference: str = "auto", *, timeout_s: float = 600) -> tuple[DistContext, torch.device]:
    """Start the process group when launched by ``torchrun``; return this process's context and device.

    On CUDA each process takes GPU ``LOCAL_RANK`` and the NCCL backend; on a CPU the
    gloo backend. Outside ``torchrun`` this is :func:`tutorial_lib.env.get_device` with
    a single-process context, so scripts run unchanged either way.
    """
    import datetime

    import torch.distributed as dist

    from .env import get_device

    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(), get_device(device_preference)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = get_device(device_preference)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: "
                               "start torchrun with --nproc_per_node at most the number of GPUs.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return context(), device


def shutdown() -> None:
    """End the process group, if one is running (call it once at the end of a torchrun script)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------- which images each rank sees


def epoch_order(n: int, num_samples: int | None, generator: torch.Generator) -> list[int]:
    """The order in which a single-process :func:`~tutorial_lib.train.fit_classifier` visits ``n`` training items.

    fit_classifier's DataLoader first draws its workers' base seed from ``generator``, then the
    ``RandomSampler`` permutation; this replays both draws (a test checks it against
    the DataLoader itself).
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return list(RandomSampler(range(n), num_samples=num_samples, generator=generator))


def micro_batch_size(batch_size: int, world_size: int, accumulate_steps: int) -> int:
    """Images per micro-batch on each rank; ``batch_size`` must split evenly."""
    if accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be at least 1, got {accumulate_steps}.")
    parts = world_size * accumulate_steps
    if batch_size % parts:
        raise ValueError(f"batch_size {batch_size} (the global batch per optimizer step) does not split into "
                         f"{world_size} process(es) x {accumulate_steps} accumulation step(s); use a multiple of "
                         f"{parts}, e.g. {max(parts, batch_size // parts * parts)}.")
    return batch_size // parts


@dataclass
class MicroBatch:
    """One micro-batch of this rank: dataset indices and how its loss is scaled.

    ``real`` items count (an empty share is padded with one item of weight 0 so the rank
    still joins the gradient all-reduce); ``loss_scale`` is ``W / total weight of the
    global batch``; ``count`` is the global batch's size divided by ``W``.
    """

    indices: list[int]
    real: int
    loss_scale: float
    count: float


@dataclass
class EpochPlan:
    """This rank's micro-batches for one epoch, ``accumulate_steps`` per optimizer step."""

    micro_batches: list[MicroBatch]
    accumulate_steps: int

    @property
    def n_steps(self) -> int:
        return len(self.micro_batches) // self.accumulate_steps

    def batch_sampler(self) -> list[list[int]]:
        """For ``DataLoader(batch_sampler=...)``."""
        return [m.indices for m in self.micro_batches]

    def steps(self, loader: Iterable) -> Iterator[list[tuple[Any, Any, MicroBatch]]]:
        """Group the loader's micro-batches into optimizer steps: lists of ``(x, y, MicroBatch)``."""
        group: list[tuple[Any, Any, MicroBatch]] = []
        for (x, y), micro in zip(loader, self.micro_batches):
            group.append((x, y, micro))
            if len(group) == self.accumulate_steps:
                yield group
                group = []


def plan_epoch(order: Sequence[int], batch_size: int, accumulate_steps: int, ctx: DistContext, *,
               labels: np.ndarray | None = None, weight: torch.Tensor | None = None) -> EpochPlan:
    """Cut ``order`` into global batches and give this rank its ``accumulate_steps`` shares of each.

    A global batch is split into ``W * K`` contiguous parts of near-equal size (the last,
    smaller batch too); rank ``r`` takes parts ``r*K ... r*K + K - 1``. With class
    ``weight``, a batch's total weight needs ``labels`` (indexed like the dataset).
    """
    if weight is not None and labels is None:
        raise ValueError("class weights need the training labels to normalise the loss")
    order = np.asarray(order, dtype=np.int64)
    w = weight.detach().cpu().double().numpy() if weight is not None else None
    parts = ctx.world_size * accumulate_steps
    micro: list[MicroBatch] = []
    for start in range(0, len(order), batch_size):
        step = order[start:start + batch_size]
        total = float(w[np.asarray(labels)[step]].sum()) if w is not None else float(len(step))
        scale = ctx.world_size / total if total > 0 else 0.0
        shares = np.array_split(step, parts)[ctx.rank * accumulate_steps:(ctx.rank + 1) * accumulate_steps]
        for share in shares:
            indices = share.tolist() if len(share) else [int(step[0])]
            micro.append(MicroBatch(indices, len(share), scale, len(step) / ctx.world_size))
    return EpochPlan(micro, accumulate_steps)


def rank_generator(seed: int, ctx: DistContext) -> torch.Generator:
    """A DataLoader generator for this rank (its workers' seeds): rank 0 gets ``seed`` itself."""
    generator = torch.Generator()
    generator.manual_seed(int(seed) + 1_000_003 * ctx.rank)
    return generator


def planned_steps(train_data: Dataset, config: Any, device: torch.device, ctx: DistContext, *,
                  labels: np.ndarray | None = None, weight: torch.Tensor | None = None) -> Callable:
    """``steps(epoch)`` for :func:`tutorial_lib.loop.fit`: this rank's micro-batches of each global batch.

    ``config`` is a :class:`~tutorial_lib.train.TrainConfig` (seed, batch size, accumulation, workers).
    """
    from .env import make_generator, seed_worker

    def steps(epoch: int) -> tuple[Iterator[list[tuple[Any, Any, MicroBatch]]], int]:
        generator = make_generator(config.seed * 10_000 + epoch)
        order = epoch_order(len(train_data), config.samples_per_epoch, generator)
        plan = plan_epoch(order, config.batch_size, config.accumulate_steps, ctx, labels=labels, weight=weight)
        loader = DataLoader(train_data, batch_sampler=plan.batch_sampler(), num_workers=config.num_workers,
                            worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
                            generator=rank_generator(config.seed * 10_000 + epoch, ctx))
        return plan.steps(loader), plan.n_steps

    return steps


# --------------------------------------------------------------------------- the model and its gradients


def wrap(model: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` in a process group of more than one process, else ``model``."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sync_gradients(model: nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on the micro-steps before the last of an accumulation (``no_sync``)."""
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def micro_loss(per_item: torch.Tensor, micro: MicroBatch) -> torch.Tensor:
    """The micro-batch's share of the global batch's mean loss, scaled for DDP's averaging."""
    return per_item[:micro.real].sum() * micro.loss_scale


# --------------------------------------------------------------------------- collectives


def all_reduce_sum(values: Sequence[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum numbers over all ranks (returned unchanged in a single process)."""
    if not ctx.enabled:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (nothing in a single process)."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def gather_predictions(predict: Callable[[Dataset], np.ndarray], data: Dataset, ctx: DistContext) -> np.ndarray:
    """``predict(data)`` computed in shards (rank ``r`` takes items ``r, r + W, ...``), gathered on every rank."""
    if not ctx.enabled:
        return predict(data)
    indices = np.arange(ctx.rank, len(data), ctx.world_size)
    mine = predict(Subset(data, indices.tolist())) if len(indices) else None
    shards = gather_objects((indices, mine), ctx)
    width = next(p.shape[1] for _, p in shards if p is not None)
    out = np.empty((len(data), width), dtype=np.float32)
    for idx, probs in shards:
        if probs is not None:
            out[idx] = probs
    return out
