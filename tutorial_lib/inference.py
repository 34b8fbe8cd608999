"""Predicting with a saved model: ``tl.predict(model, images)`` and ``python -m tutorial_lib predict``.

Introduced at the end of ``04_transfer_learning_fashion``. Images are files, folders
(searched recursively) or glob patterns; the result is one row per image with the
predicted class and the probability of every class (for DR grades also the expected
grade, and the prediction uses the model's saved cut points). Files that cannot be read,
are too small, or too large to decode safely are listed and skipped, never fatal.
"""
from __future__ import annotations

import glob
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .data import IMAGE_EXTENSIONS, DataError, is_hidden, open_image
from .export import ExportedModel, as_model

MIN_SIDE = 8  # px: below this a photo holds nothing a CNN can classify


class PredictError(ValueError):
    """Nothing to predict: no image found where the user pointed."""


def find_images(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by ``inputs`` (files, folders searched recursively, globs), and the inputs that failed.

    Hidden files and folders are left out. Raises :class:`PredictError` when nothing is found.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(is_hidden(part) for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            found += matches
            if not matches:
                problems.append((str(item), "the pattern matches no file"))
        else:
            problems.append((str(item), "does not exist"))
    unique = list(dict.fromkeys(found))
    if not unique:
        where = ", ".join(str(i) for i in inputs) or "(nothing given)"
        raise PredictError(f"No images found in {where} (folders are searched recursively for "
                           f"{', '.join(IMAGE_EXTENSIONS)}). Fix: give image files, a folder of photos or a glob "
                           "such as 'photos/*.jpg'.")
    return unique, problems


def _load(path: Path, model: ExportedModel) -> tuple[torch.Tensor | None, str]:
    """The transformed image, or ``None`` and why it was skipped."""
    try:
        image = open_image(path)
    except DataError as err:
        return None, str(err).removeprefix(f"{path} ").removeprefix("is ")  # the path is printed beside it
    if min(image.size) < MIN_SIDE:
        return None, (f"too small to classify ({image.width}x{image.height} px; at least {MIN_SIDE} px a side, "
                      f"the model was trained at {model.meta['image_size']} px)")
    try:
        return model.transform(image), ""
    except (ValueError, OSError) as err:
        return None, f"preprocessing failed ({type(err).__name__}: {err})"


def _gradcam_png(model: ExportedModel, x: torch.Tensor, target: int, out: Path) -> None:
    from .explain import grad_cam, last_stage, overlay_heatmap
    from .preprocess import tensor_to_image

    cam, _ = grad_cam(model.network, last_stage(model.network), x.unsqueeze(0), target)
    view = tensor_to_image(x, model.meta["preprocessing"]["backbone_transform"])
    overlay_heatmap(view, cam).save(out)


def predict_table(model_or_path: ExportedModel | str | Path, images: str | Path | Sequence[str | Path], *,
                  batch_size: int = 16, device: str | torch.device = "auto", gradcam_dir: str | Path | None = None,
                  progress: bool = True) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """:func:`predict` without the warning: returns the table and the skipped ``(path, reason)`` pairs."""
    from .progress import tqdm

    from .env import get_device

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    device = get_device(device) if isinstance(device, str) else device
    model = as_model(model_or_path, device)
    paths, skipped = find_images(images)
    if gradcam_dir is not None:
        Path(gradcam_dir).mkdir(parents=True, exist_ok=True)
    network = model.inference_network()
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            x, why = _load(path, model)
            (batch.append((path, x)) if x is not None else skipped.append((str(path), why)))
        bar.update(len(paths[start:start + batch_size]))
        if batch:
            x = torch.stack([x for _, x in batch])  # (batch, 3, H, W)
            rows += _rows(model, network, [p for p, _ in batch], x, gradcam_dir, start)
    bar.close()
    return pd.DataFrame(rows, columns=_columns(model, gradcam_dir is not None)), skipped


def _columns(model: ExportedModel, gradcam: bool) -> list[str]:
    return ["path", "prediction", *[f"p_{c}" for c in model.classes],
            *(["expected_grade"] if model.ordinal else []), *(["gradcam"] if gradcam else [])]


def _rows(model: ExportedModel, network: torch.nn.Module, paths: list[Path], x: torch.Tensor,
          gradcam_dir: str | Path | None, start: int) -> list[dict[str, Any]]:
    from .grades import expected_grade

    probs = model.predict_proba(x, network)  # (batch, n_classes)
    decided = model.decide(probs)
    rows = []
    for i, (path, p, k) in enumerate(zip(paths, probs, decided)):
        row: dict[str, Any] = {"path": str(path), "prediction": model.classes[int(k)],
                               **{f"p_{c}": float(v) for c, v in zip(model.classes, p)}}
        if model.ordinal:
            row["expected_grade"] = float(expected_grade(p[None])[0])
        if gradcam_dir is not None:
            out = Path(gradcam_dir) / f"{start + i:05d}_{path.stem}.png"
            _gradcam_png(model, x[i], int(k), out)
            row["gradcam"] = str(out)
        rows.append(row)
    return rows


def predict(model_or_path: ExportedModel | str | Path, images: str | Path | Sequence[str | Path], *,
            batch_size: int = 16, device: str | torch.device = "auto", out: str | Path | None = None,
            gradcam_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Predict every image in ``images`` with a saved model (a folder from ``tl.export.save_model``, or loaded).

    Returns one row per image: ``path``, ``prediction``, ``p_<class>`` per class (DR: also
    ``expected_grade``; ``gradcam`` when ``gradcam_dir`` is given, where heat-map PNGs go).
    ``out`` also writes the table as CSV. Skipped files are named in one warning and listed in
    ``table.attrs["skipped"]``.
    """
    table, skipped = predict_table(model_or_path, images, batch_size=batch_size, device=device,
                                   gradcam_dir=gradcam_dir, progress=progress)
    table.attrs["skipped"] = skipped
    if skipped:
        shown = "\n  ".join(f"{p}: {why}" for p, why in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(f"Skipped {len(skipped)} input(s):\n  {shown}{more}", stacklevel=2)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    return table
