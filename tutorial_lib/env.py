"""Device choice, numeric precision, seeding and an environment report.

Introduced in ``00_setup``. Nothing here runs on import: the device and the
seed are chosen once, at the top of a notebook, and passed on explicitly.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import platform
import random
import sys
import warnings
from importlib import metadata
from typing import Any, Callable

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def get_device(preference: str = "auto") -> torch.device:
    """Return the device to compute on.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU. Asking for a device
    that is not there falls back to the CPU with a warning instead of failing
    deep inside a training loop.
    """
    preference = str(preference).lower()
    if preference.startswith("cuda") or preference == "auto":
        if torch.cuda.is_available():
            device = torch.device(preference if preference.startswith("cuda") else "cuda")
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise ValueError(f"DEVICE={preference!r}, but this machine has {count} CUDA GPU(s) "
                                 f"(cuda:0 to cuda:{count - 1}); pick one of those, or 'auto'.")
            return device
        if preference != "auto":
            warnings.warn(f"DEVICE={preference!r} asked for, but no CUDA GPU is visible: using the CPU.", stacklevel=2)
            return torch.device("cpu")
    if preference in ("mps", "auto"):
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        if preference == "mps":
            warnings.warn("DEVICE='mps' asked for, but MPS is not available: using the CPU.", stacklevel=2)
        return torch.device("cpu")
    if preference == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Unknown device {preference!r}; use one of {', '.join(DEVICE_CHOICES)} (or 'cuda:N').")


# --------------------------------------------------------------------------- numeric precision

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
"""The one precision setting, wherever a network runs: ``float32``; ``bfloat16`` or ``float16`` mixed precision
(matrix products in 16 bits, weights and optimizer in float32); ``auto``: bfloat16 where the hardware computes it
natively, else float32. float16 needs a CUDA GPU (and a gradient scaler, :func:`grad_scaler`)."""


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
    """``"auto"`` -> ``"bfloat16"`` where the hardware computes it natively, else ``"float32"``; others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved ``precision`` on ``device`` (none for float32).

    A CPU has bfloat16 autocast only: ``float16`` there runs in float32.
    """
    if precision == "float32" or (device.type == "cpu" and precision != "bfloat16"):
        return contextlib.nullcontext()
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, active only for float16 on CUDA (bfloat16 and float32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "float16")


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and PyTorch (CPU and all GPUs); return the seed."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    return seed


def make_generator(seed: int) -> torch.Generator:
    """A seeded ``torch.Generator`` for one DataLoader (its shuffling and its workers' seeds)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed NumPy and ``random`` in each worker from torch's seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def default_num_workers(max_workers: int = 4) -> int:
    """DataLoader workers that suit this machine: one core is left for the main process."""
    return max(0, min(max_workers, (os.cpu_count() or 1) - 1))


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory; the message says which smaller batch size to try."""


def out_of_memory_advice(batch_size: int, device: torch.device, where: str = "training") -> str:
    """A message for an out-of-memory error: what ran out, and a concrete smaller batch size to try."""
    smaller = max(1, int(batch_size) // 2)
    memory = "GPU memory" if device.type == "cuda" else f"memory on {device}"
    fix = (f"re-run with batch size {smaller} (half of {batch_size}): TrainConfig(batch_size={smaller}) in the cell "
           "that builds the training config; halve again if it still fails")
    if batch_size <= 1:
        fix = "the batch is already 1: use a smaller IMAGE_SIZE, a smaller BACKBONE, or PROFILE='default'"
    return (f"Out of {memory} during {where} at batch size {batch_size}. Fix: {fix}. "
            "Other programs holding the same GPU (another notebook's kernel) also count: restart them.")


def explains_out_of_memory(func: Callable) -> Callable:
    """Decorate a training function taking ``config`` (with ``batch_size``) and ``device``.

    An out-of-memory error inside it (``torch.OutOfMemoryError`` on a GPU, the CPU
    allocator's failure on a CPU) is re-raised as :class:`OutOfMemory` with a concrete
    smaller batch size to try.
    """
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
                raise
            bound = signature.bind_partial(*args, **kwargs).arguments
            batch_size = getattr(bound.get("config"), "batch_size", 0)
            device = torch.device(bound.get("device") or "cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            message = out_of_memory_advice(batch_size, device, where=func.__name__)
            if bound.get("checkpoint") is not None:
                message += (" The checkpoint of the last finished epoch is kept, but a run with another batch "
                            "size starts afresh (a checkpoint is resumed only with the same settings).")
            raise OutOfMemory(message) from err

    return wrapper


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report(device: torch.device | None = None) -> dict[str, str]:
    """Versions, device and threads: what to paste into a bug report."""
    device = device or get_device("auto")
    report = {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "device": str(device),
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    for package in ("torch", "torchvision", "timm", "scikit-learn", "scikit-image", "numpy", "pandas",
                    "matplotlib", "papermill", "tutorial_lib"):
        report[package] = _version(package)
    return report
