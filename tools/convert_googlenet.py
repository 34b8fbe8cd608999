"""Convert Google's reference GoogLeNet weights (per-layer HDF5 files) into the safetensors file the project carries.

Run once, by a maintainer, from the project root (needs ``h5py``, a dev dependency)::

    python tools/convert_googlenet.py [--source ../shared/weights/googlenet-inception-v1] [--check]

It reads ``dump/<layer>_w.h5`` / ``_b.h5`` (weights stored as (out, kH, kW, in)), transposes them to
PyTorch's (out, in, kH, kW), checks every tensor's shape against :class:`tutorial_lib.googlenet.GoogLeNet`,
maps the 1008-way classifier onto the 1,000 ImageNet classes in timm's / torchvision's order (through
``synsets.txt``), and writes ``data/weights/googlenet-inception-v1/googlenet_inception_v1.safetensors``
with float32 tensors, plus the licence and the test photo. It prints the file's SHA-256, which
``tutorial_lib/googlenet.py`` holds as ``WEIGHTS_SHA256``. ``--check`` writes nothing and fails if the
file the project carries differs from a fresh conversion.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "weights" / "googlenet-inception-v1"
TARGET = ROOT / "data" / "weights" / "googlenet-inception-v1"
COPIED = ("LICENSE", "dog.jpg")

# Google's layer names -> this project's module names (tutorial_lib.googlenet.GoogLeNet).
STEM = {"conv2d0": "conv1.0", "conv2d1": "conv2.0.0", "conv2d2": "conv2.1.0"}
BRANCHES = {"1x1": "branch1.0", "3x3_bottleneck": "branch2.0.0", "3x3": "branch2.1.0",
            "5x5_bottleneck": "branch3.0.0", "5x5": "branch3.1.0", "pool_reduce": "branch4.1.0"}
AUXILIARY = {"head0_bottleneck": "aux1.conv.0", "head1_bottleneck": "aux2.conv.0"}


def layer_names() -> dict[str, str]:
    """Every converted Google layer and the module it fills (the classifier ``softmax2`` is mapped separately)."""
    from tutorial_lib.googlenet import INCEPTION_BLOCKS

    names = dict(STEM)
    for block in INCEPTION_BLOCKS:
        for google, ours in BRANCHES.items():
            names[f"mixed{block.removeprefix('inception')}_{google}"] = f"{block}.{ours}"
    return {**names, **AUXILIARY}


def read_h5(source: Path, layer: str, part: str) -> np.ndarray:
    import h5py

    with h5py.File(source / "dump" / f"{layer}_{part}.h5", "r") as f:
        return np.asarray(f[f"{layer}_{part}"], dtype=np.float32)


def classifier_rows(source: Path) -> np.ndarray:
    """For each ImageNet class in the usual order (timm's synsets), its row in Google's 1008-way classifier."""
    from timm.data import ImageNetInfo

    google = [line.split(" ", 1)[0] for line in (source / "synsets.txt").read_text().splitlines()[:1001]]
    row_of = {wnid: i for i, wnid in enumerate(google) if i >= 1}  # row 0 is the dummy class
    usual = ImageNetInfo().label_names()
    missing = [wnid for wnid in usual if wnid not in row_of]
    if len(usual) != 1000 or missing or len(row_of) != 1000:
        raise ValueError(f"synsets.txt does not hold the 1,000 ImageNet classes (missing: {missing[:5]}).")
    return np.array([row_of[wnid] for wnid in usual])


def convert(source: Path) -> dict[str, torch.Tensor]:
    """All tensors of the network (auxiliary heads: only their 1x1 convolutions), shapes checked."""
    from tutorial_lib.googlenet import GoogLeNet

    expected = GoogLeNet(num_classes=1000, aux_logits=True).state_dict()
    state: dict[str, torch.Tensor] = {}
    for google, ours in layer_names().items():
        weight = read_h5(source, google, "w").transpose(0, 3, 1, 2)  # (out, kH, kW, in) -> (out, in, kH, kW)
        state[f"{ours}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{ours}.bias"] = torch.from_numpy(read_h5(source, google, "b"))
    rows = classifier_rows(source)
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(read_h5(source, "softmax2", "w")[:, 0, 0, :][rows]))
    state["fc.bias"] = torch.from_numpy(read_h5(source, "softmax2", "b")[rows])
    for key, tensor in state.items():
        if key not in expected or tuple(expected[key].shape) != tuple(tensor.shape):
            want = tuple(expected[key].shape) if key in expected else "no such tensor"
            raise ValueError(f"{key}: converted shape {tuple(tensor.shape)}, the network expects {want}.")
    missing = sorted(k for k in expected if k not in state and not k.startswith(("aux1.fc", "aux2.fc")))
    if missing:
        raise ValueError(f"No weights for {missing}.")
    return state


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--check", action="store_true", help="compare with the carried file; write nothing")
    args = parser.parse_args(argv)
    if not (args.source / "dump").is_dir():
        print(f"No {args.source / 'dump'}: point --source at the folder with Google's HDF5 files.", file=sys.stderr)
        return 2
    state = convert(args.source)
    # one metadata entry: safetensors writes several in a random order, and the file's SHA-256 must not change
    metadata = {"source": "Google's reference GoogLeNet (Szegedy et al., CVPR 2015) from the inception.torch HDF5 "
                          "dump; classifier rows mapped to the 1,000 ImageNet classes in timm/torchvision order"}
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "googlenet_inception_v1.safetensors"
        save_file(state, str(fresh), metadata=metadata)
        target = TARGET / fresh.name
        if args.check:
            same = target.is_file() and sha256(target) == sha256(fresh)
            print(f"{target}: {'the same as' if same else 'DIFFERS from'} a fresh conversion")
            return 0 if same else 1
        TARGET.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh, target)
    for name in COPIED:
        shutil.copyfile(args.source / name, TARGET / name)
    n_params = sum(t.numel() for t in state.values())
    print(f"{target}: {len(state)} tensors, {n_params:,} parameters, {target.stat().st_size / 2**20:.1f} MiB")
    print(f"sha256 {sha256(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
