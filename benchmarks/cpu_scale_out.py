"""CPU figures behind the README's scale-out section: training-step rate and preparation rate.

    python benchmarks/cpu_scale_out.py [--out outputs/cpu_scale_out.json]

Measures, on this machine: (1) EfficientNet-Lite0 training steps at 224 px (forward,
backward, AdamW; random images, no data loading); (2) `prepare` on embedded clothing
photos (decode, resize-pad to 224); (3) decode + fundus-disc crop to 512 px of synthetic
3888 x 2592 JPEG fundus photos (the size of many EyePACS images; synthetic, so JPEG
decoding may be faster than on real photos).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import tutorial_lib.data as tld
import tutorial_lib.tools.prepare as tlp
from tutorial_lib.models import load_backbone


def train_step_rate(batch: int = 16, steps: int = 4) -> float:
    model = load_backbone("efficientnet_lite0", num_classes=5).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 5, (batch,))
    for i in range(steps + 1):
        if i == 1:
            started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - started)


def prepare_rate(folder: Path, n: int = 60) -> float:
    clothing = tld.load_dataset("clothing")
    small = tld.ClassificationData("clothing", clothing.classes, clothing.train.subset(range(n)),
                                   clothing.val.subset(range(4)), clothing.test.subset(range(4)), info=clothing.info)
    started = time.perf_counter()
    tlp.prepare(small, folder / "clothing", size=224, progress=False)
    return (n + 8) / (time.perf_counter() - started)


def fundus_rate(folder: Path, n: int = 6) -> float:
    photos = []
    for i in range(n):
        image = Image.new("RGB", (3888, 2592))
        ImageDraw.Draw(image).ellipse((600, 50, 3300, 2550), fill=(170, 70 + 20 * (i % 5), 40))
        (folder / "eyepacs" / "train").mkdir(parents=True, exist_ok=True)
        image.save(folder / "eyepacs" / "train" / f"{i}_left.jpeg", quality=90)
        photos.append(folder / "eyepacs" / "train" / f"{i}_left.jpeg")
    started = time.perf_counter()
    for photo in photos:
        tlp.process_image(photo, 512, "disc")
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("outputs/cpu_scale_out.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "lite0_train_images_per_s_224": round(train_step_rate(), 2),
                   "prepare_clothing_images_per_s_224_pad": round(prepare_rate(Path(tmp)), 1),
                   "disc_crop_synthetic_3888x2592_images_per_s_512": round(fundus_rate(Path(tmp)), 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
