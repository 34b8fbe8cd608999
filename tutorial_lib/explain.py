"""Grad-CAM: where in the image did the network look for its answer?

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017. The class score's gradient with respect to
a convolutional layer's activations, averaged per channel, weights those channels;
their positive sum is the heat map.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[np.ndarray, int]:
    """Heat map in [0, 1] at ``layer``'s resolution for one image ``x`` of shape ``(1, 3, H, W)``.

    ``target`` is the class to explain (default: the predicted class). Returns the map
    and the explained class.
    """
    activations: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        activations.append(output)

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # frozen layers still pass gradients back to `layer`
            logits = model(x)  # (1, n_classes)
            target = int(logits.argmax(1)) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
        act = activations[-1]  # (1, C, h, w)
        weights = act.grad.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
        cam = torch.relu((weights * act).sum(dim=1))[0].detach()  # (h, w)
    finally:
        handle.remove()
        model.train(was_training)
    cam = cam / cam.max() if float(cam.max()) > 0 else cam
    return cam.cpu().numpy(), target


@torch.no_grad()
def last_stage(model: nn.Module, input_size: int = 224) -> nn.Module:
    """The module whose output is the network's last feature map: the Grad-CAM layer.

    Found by running one blank image and keeping the last module to return a map larger than
    1x1: a block finishes after its branches, so GoogLeNet gives its whole last inception block
    (all 1,024 channels), EfficientNet its head convolution with its activation.
    """
    finished: list[nn.Module] = []

    def note(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            finished.append(module)

    handles = [m.register_forward_hook(note) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        device = next(model.parameters()).device
        model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not finished:
        raise ValueError(f"{type(model).__name__} has no spatial feature map for Grad-CAM.")
    return finished[-1]


def grad_cam_examples(model: nn.Module, split, transform, predicted: np.ndarray, device: torch.device, *,
                      classes, n_right: int = 4, n_wrong: int = 4, seed: int = 0):
    """Grad-CAM maps for a few right and a few wrong predictions of ``model`` on ``split``.

    Returns ``(images, heatmaps, titles)`` for :func:`tutorial_lib.plots.heatmap_overlays`.
    """
    rng = np.random.default_rng(seed)
    right = np.flatnonzero(predicted == split.labels)
    wrong = np.flatnonzero(predicted != split.labels)
    chosen = [(i, "right") for i in rng.permutation(right)[:n_right]] + [(i, "wrong") for i in rng.permutation(wrong)[:n_wrong]]
    model = model.to(device)
    layer = last_stage(model)
    images, maps, titles = [], [], []
    for i, verdict in chosen:
        image = split.image(int(i))
        cam, target = grad_cam(model, layer, transform(image).unsqueeze(0).to(device), int(predicted[i]))
        images.append(image)
        maps.append(cam)
        titles.append(f"{verdict}: {classes[target]}\n(true {classes[split.labels[i]]})")
    return images, maps, titles


def overlay_heatmap(image, cam: np.ndarray, alpha: float = 0.45):
    """``image`` (PIL) with the heat map ``cam`` (values in [0, 1]) blended over it in the jet colour map."""
    from matplotlib import colormaps
    from PIL import Image

    rgb = image.convert("RGB")
    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(rgb.size, Image.BILINEAR)
    coloured = Image.fromarray(np.uint8(colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255))
    return Image.blend(rgb, coloured, alpha)
