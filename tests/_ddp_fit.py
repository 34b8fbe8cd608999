"""Run by tests/test_distributed.py, alone or under torchrun: fit() on a slice of the embedded RetinaMNIST.

A tiny CNN without BatchNorm or dropout, so a 2-process run can match a 1-process run up to float rounding.
Writes the final weights and the history (rank 0 only) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import tutorial_lib.data as tld
import tutorial_lib.distributed as tldist
import tutorial_lib.train as tlt

N_TRAIN, N_VAL = 200, 60  # 200 = 6 steps of 32 + a last step of 8: the uneven case is covered


def problem() -> tuple[TensorDataset, TensorDataset]:
    data = tld.load_retinamnist()

    def tensors(split: tld.ImageSplit, n: int) -> TensorDataset:
        x = torch.from_numpy(split.images[:n]).permute(0, 3, 1, 2).float() / 255  # (n, 3, 28, 28)
        return TensorDataset(x, torch.from_numpy(split.labels[:n]))

    return tensors(data.train, N_TRAIN), tensors(data.val, N_VAL)


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def config(accumulate: int = 1, epochs: int = 3) -> tlt.TrainConfig:
    return tlt.TrainConfig(epochs=epochs, batch_size=32, lr_head=1e-2, lr_backbone=1e-2, seed=0,
                           accumulate_steps=accumulate)


def run(cfg: tlt.TrainConfig, device: torch.device, checkpoint: Path | None = None,
        stop_after_epoch: int | None = None) -> tuple[nn.Module, "object"]:
    train, val = problem()
    net = model()
    history = tlt.fit_classifier(net, train, val, cfg, device, head_prefixes=["6"], n_classes=5,
                      train_labels=train.tensors[1].numpy(), checkpoint=checkpoint,
                      stop_after_epoch=stop_after_epoch, progress=False)
    return net, history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--interrupt", action="store_true", help="stop after epoch 1, then resume a fresh model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx, device = tldist.init_from_env("cpu")
    cfg = config(args.accumulate)
    checkpoint = args.out / "run.pt" if args.interrupt else None
    if args.interrupt:
        run(cfg, device, checkpoint, stop_after_epoch=1)
    net, history = run(cfg, device, checkpoint)
    if ctx.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), args.out / "weights.pt")
        (args.out / "history.json").write_text(history.to_json(orient="records", double_precision=15))
        (args.out / "world.json").write_text(json.dumps({"world_size": ctx.world_size}))
    tldist.shutdown()


if __name__ == "__main__":
    main()
