"""Build the embedded datasets in ``data/`` from the gathered public copies.

This is provenance, not part of the package: it documents exactly how the
files under ``data/`` were chosen, so the subset can be rebuilt or changed.
It needs the gathered copies (``--source``), which a clone of this project
does not have.

    python data/scripts/make_embedded_subset.py --source ../shared/datasets

Choices (seed 0, deterministic):
- RetinaMNIST: the whole official ``retinamnist.npz`` (28 px, 1,600 images).
- Clothing (small): the official ``train``, ``validation`` and ``test`` splits
  whole. (Until 2026-11-30 only a stratified 60 % of ``train`` was embedded;
  that draw still runs, unused, so that the fashion subset, drawn next from the
  same random stream, stays the one published.)
- Fashion catalogue: every article type kept, at most ``FASHION_CAP_PER_TYPE``
  images each (random, seeded), so the long tail survives and the two
  dominant types (T-shirts, shirts) do not swamp the rest.
Then ``data/MANIFEST.sha256`` is rewritten for every file under ``data/``
except itself and this script.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import random
import shutil
from collections import defaultdict
from pathlib import Path

FIRST_RELEASE_CLOTHING_FRACTION = 0.6  # the first release's share of clothing train/ (see the docstring)
FASHION_CAP_PER_TYPE = 95
SEED = 0
DATA = Path(__file__).resolve().parents[1]


def copy_clothing(src: Path, dst: Path, rng: random.Random) -> None:
    for split in ("train", "validation", "test"):
        for class_dir in sorted((src / split).iterdir()):
            files = sorted(class_dir.glob("*.jpg"))
            if split == "train":  # drawn and discarded: keeps the random stream of the first release
                rng.sample(files, math.ceil(FIRST_RELEASE_CLOTHING_FRACTION * len(files)))
            out = dst / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, out / f.name)


def copy_fashion(src: Path, dst: Path, rng: random.Random) -> None:
    with open(src / "styles.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames
        rows = [r for r in reader if (src / "images" / f"{r['id']}.jpg").exists()]
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_type[r["articleType"]].append(r)
    keep = []
    for _, group in sorted(by_type.items()):
        keep += group if len(group) <= FASHION_CAP_PER_TYPE else rng.sample(group, FASHION_CAP_PER_TYPE)
    keep.sort(key=lambda r: int(r["id"]))
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for r in keep:
        shutil.copy2(src / "images" / f"{r['id']}.jpg", dst / "images" / f"{r['id']}.jpg")
    with open(dst / "styles.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)


def write_manifest() -> None:
    skip = {"MANIFEST.sha256"}
    lines = []
    for p in sorted(DATA.rglob("*")):
        rel = p.relative_to(DATA).as_posix()
        if p.is_file() and rel not in skip and not rel.startswith("scripts/") and rel != "README.md":
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
    (DATA / "MANIFEST.sha256").write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder holding the gathered datasets")
    args = parser.parse_args()
    rng = random.Random(SEED)
    for name in ("retinamnist", "clothing", "fashion"):
        shutil.rmtree(DATA / name, ignore_errors=True)
    (DATA / "retinamnist").mkdir(parents=True)
    shutil.copy2(args.source / "retinamnist" / "retinamnist.npz", DATA / "retinamnist" / "retinamnist.npz")
    copy_clothing(args.source / "clothing-small", DATA / "clothing", rng)
    copy_fashion(args.source / "fashion-products", DATA / "fashion", rng)
    write_manifest()


if __name__ == "__main__":
    main()
