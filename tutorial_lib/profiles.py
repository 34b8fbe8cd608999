"""How much work a notebook run does: the ``PROFILE`` parameter of notebooks 03-05.

One :class:`Profile` class for the transfer-learning notebooks (:data:`PROFILES`) and the
tagging notebook (:data:`TAGGING_PROFILES`); ``"auto"`` picks the GPU profile on a CUDA
GPU and the CPU profile elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Profile:
    """The sizes of one run."""

    name: str
    image_size: int  # input side in pixels fed to the backbone
    epochs: int  # epochs of training on cached activations (finetune_top, the taggers)
    batch_size: int  # images per batch (the frozen trunk's pass; the taggers' training steps)
    full_epochs: int = 0  # epochs of finetune_full end to end (0 skips it)
    full_train_images: int | None = None  # cap on images per epoch for finetune_full (None: all)
    precision: str = "float32"  # of end-to-end training (tutorial_lib.env.PRECISIONS)
    channels_last: bool = False
    top_stages: int | None = None  # stages trained on cached activations (None: the notebook's TOP_STAGES)
    max_images: int | None = None  # cap on every split (quick smoke runs)
    max_test: int | None = None  # cap on the test split only, where it differs


PROFILES = {
    # CI-size smoke run: every code path, tiny numbers.
    "quick": Profile("quick", 96, epochs=3, batch_size=32, full_epochs=1, full_train_images=64, max_images=120),
    # A laptop CPU in a few minutes: cached-activation training does most of the work, no end-to-end epochs
    # (benchmarks/README.md: what one costs on 2 cores, and why batches of 16). 5 epochs on cached activations:
    # GoogLeNet's top two blocks reach 0.886 validation accuracy on clothing in 5 (seed 0), 0.891 in 8 at 1.6x the
    # time (docs/experiments.md).
    "default": Profile("default", 224, epochs=5, batch_size=16),
    # A GPU: end-to-end fine-tuning at 224 px with mixed precision and a large batch.
    "full": Profile("full", 224, epochs=20, batch_size=128, full_epochs=12, precision="auto", channels_last=True),
}

TAGGING_PROFILES = {
    "quick": Profile("quick", 96, epochs=2, batch_size=32, top_stages=1, max_images=240, max_test=80),
    # 2 CPU cores in a few minutes: the trunk runs once per image and view, then the top trains on its activations.
    # One trained block (GoogLeNet's inception5b): half the training time of two, validation 0.5-1 point lower
    # (docs/experiments.md).
    "default": Profile("default", 160, epochs=10, batch_size=64, top_stages=1),
    # A GPU: larger input, more stages trained, more epochs.
    "full": Profile("full", 224, epochs=30, batch_size=128, top_stages=3),
}


def get_profile(name: str, device: torch.device, profiles: dict[str, Profile] = PROFILES) -> Profile:
    """The named profile of ``profiles``; ``"auto"`` is ``"full"`` on a CUDA GPU, else ``"default"``.

    Away from a CUDA GPU, end-to-end training runs in float32 (bfloat16 was not measured faster there).
    """
    if name == "auto":
        name = "full" if device.type == "cuda" else "default"
    if name not in profiles:
        raise ValueError(f"Unknown PROFILE {name!r}; use one of {', '.join(profiles)} or 'auto'.")
    profile = profiles[name]
    if device.type != "cuda" and profile.precision != "float32":
        profile = replace(profile, precision="float32")
    return profile
