"""Which CPU recipe for notebook 04 with GoogLeNet: input size, stages trained, mirrored views, epochs? (docs/experiments.md)

Each configuration runs notebook 04's default path (resize-and-pad, the frozen trunk cached once, ``finetune_top``
with ``train.top_config``) on the clothing photos from an empty cache, and prints the validation accuracy of every
epoch and the wall time of the caching and of the training. Choices are made on validation; the test split is
not scored.

    python benchmarks/cpu_recipe_googlenet.py [--configs 224:2:2 160:2:2 ...] [--out FILE]

A configuration is ``SIZE:TOP_STAGES:VIEWS`` (VIEWS 1: the photos as they are; 2: and mirrored).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import tutorial_lib as tl
from tutorial_lib import preprocess as pp


def run(size: int, top_stages: int, views: int, seed: int = 0) -> dict:
    device = torch.device("cpu")
    tl.env.seed_everything(seed)
    data = tl.data.load_dataset("clothing", seed=seed)
    splits = {"train": data.train, "val": data.val, "test": data.val.subset([0, 1])}  # the test split is not scored
    profile = tl.profiles.get_profile("default", device)
    backbone = tl.models.load_backbone("googlenet", num_classes=len(data.classes))
    pad = pp.ResizePad(size, pp.pad_colour(backbone.data_config))
    eval_tf = pp.Compose((pad, tl.models.make_transform(backbone, input_size=(3, size, size), crop_pct=1.0)))
    train_views = ("identity", "hflip")[:views]
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        frozen = tl.frozen.FrozenTrunk(backbone, tl.frozen.cut_before_last(backbone, top_stages), eval_tf, device,
                                       cache_dir=Path(cache), batch_size=profile.batch_size)
        for view in train_views:
            frozen.activations(splits["train"], view)
        frozen.activations(splits["val"])
        caching = time.perf_counter() - start
        config = replace(tl.train.top_config(profile, seed=seed))
        result = tl.train.finetune_top(frozen, splits, config, n_classes=len(data.classes), train_views=train_views,
                                       progress=False)
    history = result.history
    return {"image_size": size, "top_stages": top_stages, "views": views, "caching_s": round(caching, 1),
            "training_s": round(time.perf_counter() - start - caching, 1),
            "val_accuracy_by_epoch": [round(float(v), 3) for v in history["val_accuracy"]],
            "best_val_accuracy": round(float(history["val_accuracy"].max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["224:2:2", "224:1:2", "160:2:2", "224:2:1"])
    parser.add_argument("--out", type=Path, default=Path("outputs/cpu_recipe_googlenet.json"))
    args = parser.parse_args()
    rows = []
    for spec in args.configs:
        size, stages, views = (int(v) for v in spec.split(":"))
        rows.append(run(size, stages, views))
        print(json.dumps(rows[-1]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
