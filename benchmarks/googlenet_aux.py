"""Does fine-tuning GoogLeNet end to end gain from its auxiliary classifiers? (docs/experiments.md)

The auxiliary classifiers of the paper sit after inception 4a and 4d and add 0.3 x their loss during training.
Google's published weights have their 1x1 convolutions but not their 1024-unit linear layers, so with
``aux_logits=True`` those layers start from fresh weights. This runs ``finetune_full`` on the clothing photos
twice, from the same ImageNet weights and seed, with and without them, and prints the validation accuracy of
each epoch (the choice is made on validation; the test split is not used).

    python benchmarks/googlenet_aux.py [--train-images 600] [--epochs 3] [--image-size 128] [--lr-backbone 1e-4]

Result (docs/experiments.md): with either learning rate the fresh auxiliary classifiers lowered validation accuracy,
so `aux_logits` is off by default.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import tutorial_lib as tl
from tutorial_lib import preprocess as pp


def run(aux: bool, splits: dict, size: int, epochs: int, seed: int, lr_backbone: float = 1e-4) -> dict:
    tl.env.seed_everything(seed)
    backbone = tl.models.load_backbone("googlenet", num_classes=10, aux_logits=aux)
    pad = pp.ResizePad(size, pp.pad_colour(backbone.data_config))
    eval_tf = pp.Compose((pad, tl.models.make_transform(backbone, input_size=(3, size, size), crop_pct=1.0)))
    train_tf = pp.Compose((pad, tl.models.make_transform(backbone, train=True, input_size=(3, size, size))))
    config = tl.train.TrainConfig(epochs=epochs, batch_size=32, lr_head=1e-3, lr_backbone=lr_backbone,
                                  weight_decay=1e-2,
                                  warmup_epochs=0.5, precision="float32", seed=seed)
    start = time.perf_counter()
    result = tl.train.finetune_full(backbone, splits, train_tf, eval_tf, torch.device("cpu"), config, n_classes=10,
                                    progress=False)
    history = result.history
    return {"aux_logits": aux, "seconds": round(time.perf_counter() - start, 1),
            "val_accuracy_by_epoch": [round(float(v), 4) for v in history["val_accuracy"]],
            "best_val_accuracy": round(float(history["val_accuracy"].max()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-backbone", type=float, default=1e-4, help="learning rate of the pretrained layers")
    parser.add_argument("--out", type=Path, default=Path("outputs/googlenet_aux.json"))
    parser.add_argument("--figure", type=Path, default=Path("outputs/googlenet_aux.png"))
    args = parser.parse_args()
    data = tl.data.load_dataset("clothing", seed=args.seed)
    rng = np.random.default_rng(args.seed)
    train = data.train.subset(np.sort(rng.choice(len(data.train), args.train_images, replace=False)))
    splits = {"train": train, "val": data.val, "test": data.val.subset(np.arange(2))}  # test unused
    rows = [run(aux, splits, args.image_size, args.epochs, args.seed, args.lr_backbone) for aux in (False, True)]
    for row in rows:
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "runs": rows}, indent=1) + "\n")
    plot(rows, args)


def plot(rows: list[dict], args: argparse.Namespace) -> None:
    """Validation accuracy by epoch, with and without the auxiliary classifiers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for row in rows:
        values = row["val_accuracy_by_epoch"]
        label = ("with auxiliary classifiers (fresh fc layers, loss weight 0.3)" if row["aux_logits"]
                 else "without auxiliary classifiers")
        ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{label}: {row['seconds']:.0f} s")
    ax.set_xlabel("epoch of end-to-end fine-tuning")
    ax.set_ylabel("validation accuracy")
    ax.set_xticks(range(1, args.epochs + 1))
    ax.set_title(f"GoogLeNet, {args.train_images} clothing photos, {args.image_size} px, pretrained layers at lr "
                 f"{args.lr_backbone:g} (seed {args.seed})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)


if __name__ == "__main__":
    main()
