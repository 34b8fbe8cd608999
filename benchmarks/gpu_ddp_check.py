"""CUDA check of the scale-out path: AMP (bfloat16, float16 + GradScaler), channels-last, images/s.

UNVERIFIED: written without a GPU (no machine was lent to the session that wrote it); it has
never run. Meant to take about 2 minutes on one GPU:

    python benchmarks/gpu_ddp_check.py [--out outputs/gpu_ddp_check.json] [--backbone efficientnet_lite0]
    torchrun --nproc_per_node 2 benchmarks/gpu_ddp_check.py      # on a machine with 2+ GPUs: NCCL DDP too

It times training steps of the backbone at 224 px on random images (no data loading: the
GPU's own rate, an upper bound for a prepared dataset), then runs fit_classifier() for one short epoch
with accumulation through the same code the CLI uses, and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import tutorial_lib.distributed as tldist
from tutorial_lib.models import load_backbone
from tutorial_lib.env import autocast, grad_scaler
from tutorial_lib.train import TrainConfig, fit_classifier


def images_per_second(model, device, batch: int, precision: str, channels_last: bool, steps: int = 20) -> float:
    """Training steps (forward, backward, AdamW) per second x batch, after 5 warm-up steps."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = grad_scaler(device, precision)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,), device=device)
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize(device)
            started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_ddp_check.json"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    ctx, device = tldist.init_from_env("cuda")
    if device.type != "cuda":
        raise SystemExit("No CUDA GPU visible: this check needs one.")
    results = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "world_size": ctx.world_size,
               "backbone": args.backbone, "batch_per_process": args.batch, "images_per_second": {}}
    for label, precision, cl in [("fp32", "float32", False), ("bf16", "bfloat16", False),
                                 ("bf16+channels_last", "bfloat16", True),
                                 ("fp16+GradScaler+channels_last", "float16", True)]:
        model = load_backbone(args.backbone, num_classes=5).model
        results["images_per_second"][label] = round(images_per_second(model, device, args.batch, precision, cl), 1)
        print(label, results["images_per_second"][label], "images/s", flush=True)
    # fit_classifier() end to end on the GPU: mixed precision, channels-last, accumulation 2, DDP when launched with torchrun
    n = 512 * ctx.world_size
    train = TensorDataset(torch.randn(n, 3, 224, 224), torch.randint(0, 5, (n,)))
    val = TensorDataset(torch.randn(128, 3, 224, 224), torch.randint(0, 5, (128,)))
    for dtype in ("bfloat16", "float16"):
        config = TrainConfig(epochs=1, batch_size=64 * ctx.world_size, precision=dtype, channels_last=True,
                             accumulate_steps=2, num_workers=2)
        history = fit_classifier(load_backbone(args.backbone, num_classes=5).model, train, val, config, device, n_classes=5,
                      train_labels=train.tensors[1].numpy(), progress=False)
        results[f"fit_{dtype}"] = {"seconds": round(float(history["seconds"].iloc[0]), 2),
                                   "train_loss": float(history["train_loss"].iloc[0]),
                                   "finite": bool(torch.isfinite(torch.tensor(history["train_loss"].values)).all())}
    results["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if ctx.is_main:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(json.dumps(results, indent=1))
    tldist.shutdown()


if __name__ == "__main__":
    main()
