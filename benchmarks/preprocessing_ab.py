"""Validation figures behind the preprocessing of notebooks 03 and 04 (seed 0, default profile, CPU).

clothing: finetune_top (TOP_STAGES=2, 8 epochs, one view) on the backbone centre crop vs resize-and-pad, 224 px;
retina: finetune_top (TOP_STAGES=1, views identity + hflip) at 96 px, the backbone transform alone vs disc crop +
Ben Graham + ring mask on the 28 px RetinaMNIST images. Run from the repository root:
    PYTHONPATH=. python benchmarks/preprocessing_ab.py clothing   (about 10 min on 2 cores per variant)
"""
import json
import sys
import time
from pathlib import Path

import numpy as np, torch
import tutorial_lib as tl
from tutorial_lib import preprocess as pp

which = sys.argv[1]
VIEWS = ("identity",) if which == "clothing" else ("identity", "hflip")  # clothing: one view, to fit the time
device = torch.device("cpu"); SEED = 0
tl.env.seed_everything(SEED)
profile = tl.profiles.get_profile("default", device)
out = {}
if which == "clothing":
    data = tl.data.load_dataset("clothing", seed=SEED)
    backbone = tl.models.load_backbone("auto", num_classes=len(data.classes))
    size = 224
    variants = {"centre_crop": tl.models.make_transform(backbone, input_size=(3, size, size)),
                "resize_pad": pp.Compose((pp.ResizePad(size, pp.pad_colour(backbone.data_config)),
                                          tl.models.make_transform(backbone, input_size=(3, size, size), crop_pct=1.0)))}
    stages, score = 2, None
else:
    data = tl.data.load_dataset("retinamnist", seed=SEED)
    backbone = tl.models.load_backbone("auto", num_classes=len(data.classes))
    size = 96
    variants = {"today": tl.models.make_transform(backbone, input_size=(3, size, size)),
                "fundus_pipeline": pp.Compose((pp.fundus_pipeline(size),
                                               tl.models.make_transform(backbone, input_size=(3, size, size), crop_pct=1.0)))}
    stages, score = 1, tl.metrics.quadratic_weighted_kappa
splits = data.splits
labels = {n: s.labels for n, s in splits.items()}
for name, tf in variants.items():
    backbone = tl.models.load_backbone("auto", num_classes=len(data.classes))
    t = time.time()
    frozen = tl.frozen.FrozenTrunk(backbone, tl.frozen.cut_before_last(backbone, stages), tf, device,
                                   cache_dir=f"outputs/cache/preprocessing_ab_{which}", batch_size=profile.batch_size)
    cfg = tl.train.top_config(profile, seed=SEED)
    r = tl.train.finetune_top(frozen, splits, cfg, n_classes=len(data.classes), train_views=VIEWS,
                              score=score, progress=False)
    row = {"seconds": round(time.time() - t, 1), "backbone": backbone.name}
    for split in ("val", "test"):
        row[f"{split}_accuracy"] = float((r.probs[split].argmax(1) == labels[split]).mean())
        if which == "retina":
            rules, th = tl.grades.ordinal_predictions(r.probs, labels)
            row[f"{split}_qwk_argmax"] = score(labels[split], rules["argmax"][split])
            row[f"{split}_qwk_thresholds"] = score(labels[split], rules["thresholds"][split])
    out[name] = row
    print(which, name, row, flush=True)
Path(f"benchmarks/preprocessing_ab_{which}.json").write_text(json.dumps(out, indent=1) + "\n")
