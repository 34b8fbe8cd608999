"""A trained model as one self-contained folder: save it, load it, export it to ONNX.

Introduced at the end of ``03_transfer_learning_dr`` and ``04_transfer_learning_fashion``.
:func:`save_model` writes a folder with two files:

- ``model.safetensors``: the weights of the whole network (frozen trunk and trained top:
  ``backbone.model``, which ``finetune_top`` and ``finetune_full`` both train in place);
- ``model.json``: everything else needed to predict: backbone name, class names, the
  preprocessing steps and their parameters, the backbone's resize/normalisation, the decision
  rule (``argmax``, or ``thresholds`` on the expected grade, with the fitted cut points), the
  library version and the SHA-256 of the weights file.

:func:`load_model` rebuilds the network from these two files only (no pickle: safetensors
holds plain tensors) and refuses a file whose digest does not match, a damaged safetensors
header, a missing class list and a folder written by another major version of the library.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import preprocess
from ._version import __version__
from ._io import atomic_path, atomic_write_text, file_sha256
from .models import Backbone

FORMAT = "tutorial_lib.model"
FORMAT_VERSION = 1
WEIGHTS_FILE, META_FILE = "model.safetensors", "model.json"
DECISIONS = ("argmax", "thresholds")
# preprocessing steps a model file may name: the picklable transforms of tutorial_lib.preprocess
_STEPS = {cls.__name__: cls for cls in (preprocess.ToRGB, preprocess.Resize, preprocess.ResizePad,
                                        preprocess.FundusCrop, preprocess.BenGraham, preprocess.RingMask,
                                        preprocess.CLAHE)}


class ModelFileError(ValueError):
    """A saved model folder is missing, damaged, tampered with or from another library version."""


def _inner_steps(steps: Any) -> list[Any] | None:
    """The transforms inside a container (``Compose`` of either kind, a list), or ``None`` for one transform."""
    if steps is None:
        return []
    if isinstance(steps, preprocess.Compose):
        return list(steps.steps)
    if isinstance(steps, (list, tuple)):
        return list(steps)
    inner = getattr(steps, "transforms", None)  # torchvision's Compose
    return inner if isinstance(inner, list) else None


def _steps_to_json(steps: Any, backbone_transform: str = "") -> list[dict[str, Any]]:
    """``tl.preprocess`` transforms (a ``Compose``, a list, or one) as ``[{"name", "params"}]``.

    A step whose ``repr`` is ``backbone_transform`` (the backbone's own resize/normalise, which the
    model file stores separately) is left out, so a notebook's ``eval_tf`` can be passed as it is.
    """
    out = []
    for step in _inner_steps(steps) if steps is None or isinstance(steps, (preprocess.Compose, list, tuple)) else [steps]:
        if backbone_transform and repr(step) == backbone_transform:
            continue
        if _inner_steps(step) is not None:
            out += _steps_to_json(_inner_steps(step), backbone_transform)
        elif type(step).__name__ in _STEPS and is_dataclass(step):
            out.append({"name": type(step).__name__, "params": asdict(step)})
        else:
            raise ValueError(f"preprocess: cannot save {step!r}; a model file holds the deterministic transforms "
                             f"of tutorial_lib.preprocess ({', '.join(_STEPS)}) and the backbone's own transform at "
                             "image_size px (tl.models.make_transform(backbone, input_size=(3, size, size)): pass "
                             "image_size=size if it differs). Leave out random augmentation.")
    return out


def _flat_steps(steps: Any) -> list[Any]:
    """Every transform inside ``steps`` (``Compose`` of either kind, a list, or one), nested ones included."""
    inner = _inner_steps(steps)
    if inner is None:
        return [steps]
    nodes = [node for step in inner for node in _flat_steps(step)]
    return nodes if steps is None or isinstance(steps, (preprocess.Compose, list, tuple)) else [steps, *nodes]


def _steps_from_json(steps: list[dict[str, Any]]) -> preprocess.Compose:
    built = []
    for step in steps:
        cls = _STEPS.get(step.get("name"))
        if cls is None:
            raise ModelFileError(f"unknown preprocessing step {step.get('name')!r}; known: {', '.join(_STEPS)}.")
        names = {f.name for f in fields(cls)}
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in step.get("params", {}).items() if k in names}
        built.append(cls(**params))
    return preprocess.Compose(tuple(built))


def _network_info(backbone: Backbone) -> dict[str, Any]:
    """How to rebuild the network's architecture: backbone name, class count, GoogLeNet's input scaling."""
    model = backbone.model
    head = model.get_submodule(backbone.head)
    info: dict[str, Any] = {"backbone": backbone.name, "num_classes": int(head.out_features)}
    if backbone.name == "torchvision_googlenet":
        info["transform_input"] = bool(model.transform_input)
    return info


def _state_to_save(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The network's tensors, without GoogLeNet's auxiliary heads (training-only), contiguous on the CPU."""
    skip = tuple(f"{name}." for name in backbone.extra_heads)
    return {k: v.detach().cpu().contiguous().clone() for k, v in backbone.model.state_dict().items()
            if not k.startswith(skip)}


def _backbone_of(model: Any) -> Backbone:
    if isinstance(model, Backbone):
        return model
    if isinstance(getattr(model, "backbone", None), Backbone):  # a FrozenTrunk: its backbone holds the full network
        return model.backbone
    raise TypeError(f"save_model needs the Backbone (or the FrozenTrunk) whose network was trained, not "
                    f"{type(model).__name__}: finetune_top trains backbone.model in place, so pass `backbone`.")


def _check_decision(decision: str, thresholds: Any, n_classes: int) -> list[float] | None:
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}.")
    if decision == "argmax":
        return None
    cuts = np.asarray(thresholds if thresholds is not None else [], dtype=float).ravel()
    if cuts.size != n_classes - 1 or np.any(np.diff(cuts) < 0) or not np.all(np.isfinite(cuts)):
        raise ValueError(f"decision='thresholds' needs {n_classes - 1} increasing cut points on the expected "
                         f"grade (tl.grades.ordinal_predictions returns them); got {cuts.tolist()}.")
    return cuts.tolist()


def save_model(model: Any, path: str | Path, *, classes: Sequence[str], image_size: int | None = None,
               preprocess: Any = None, decision: str = "argmax", thresholds: Any = None, task: str | None = None,
               metadata: dict[str, Any] | None = None) -> Path:
    """Save the whole trained network and what is needed to predict with it into the folder ``path``.

    ``model`` is the :class:`Backbone` (or its :class:`FrozenTrunk`). ``preprocess`` holds the
    ``tl.preprocess`` steps applied to a photo before the backbone's own resize and
    normalisation at ``image_size`` px (default: the backbone's); the notebook's evaluation
    transform (those steps followed by the backbone's transform) may be passed as it is. ``decision="thresholds"``
    (DR grades) cuts the expected grade at ``thresholds``. Returns the folder.
    """
    from safetensors.torch import save_file

    backbone = _backbone_of(model)
    info = _network_info(backbone)
    classes = [str(c) for c in classes]
    if len(classes) != info["num_classes"]:
        raise ValueError(f"classes has {len(classes)} names but the network's head has {info['num_classes']} "
                         "outputs: pass data.classes of the dataset it was trained on.")
    from .models import make_transform

    size = int(image_size or backbone.data_config["input_size"][-1])
    # the backbone's own transform, as made by the notebooks: with its centre crop, or without (crop_pct=1.0,
    # after ResizePad); whichever the evaluation transform holds is the one saved
    crops = dict.fromkeys([backbone.data_config.get("crop_pct", 1.0), 1.0])
    owns = {repr(make_transform(backbone, input_size=(3, size, size), crop_pct=c)): c for c in crops}
    held = [owns[r] for r in map(repr, _flat_steps(preprocess)) if r in owns]
    crop_pct = held[0] if held else backbone.data_config.get("crop_pct", 1.0)
    own = repr(make_transform(backbone, input_size=(3, size, size), crop_pct=crop_pct))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__, "task": task,
            **info, "classes": classes, "ordinal": decision == "thresholds" or task == "dr",
            "decision": decision, "thresholds": _check_decision(decision, thresholds, len(classes)),
            "image_size": size,
            "preprocessing": {"steps": _steps_to_json(preprocess, own),
                              "backbone_transform": _jsonable({**backbone.data_config, "input_size": (3, size, size),
                                                               "crop_pct": crop_pct})},
            "weights_file": WEIGHTS_FILE, "metadata": _jsonable(metadata or {})}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(_state_to_save(backbone), str(tmp), metadata={"format": FORMAT})
    meta["weights_sha256"] = file_sha256(weights)
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1) + "\n")
    return folder


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, NumPy scalars -> Python numbers, recursively (for json.dumps)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


@dataclass
class ExportedModel:
    """A loaded model folder: the network (eval mode), its classes, preprocessing and decision rule."""

    network: nn.Module
    meta: dict[str, Any]
    path: Path
    _transform: Callable | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def ordinal(self) -> bool:
        """Whether the classes are ordered grades (DR): predictions then also report the expected grade."""
        return bool(self.meta.get("ordinal"))

    @property
    def thresholds(self) -> np.ndarray | None:
        cuts = self.meta.get("thresholds")
        return None if cuts is None else np.asarray(cuts, dtype=float)

    @property
    def transform(self) -> Callable:
        """PIL image -> normalised ``(3, H, W)`` tensor: the saved steps, then the backbone's resize/normalise."""
        if self._transform is None:
            from timm.data import create_transform
            from torchvision import transforms

            config = dict(self.meta["preprocessing"]["backbone_transform"])
            config["input_size"] = tuple(config["input_size"])
            config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
            steps = _steps_from_json(self.meta["preprocessing"]["steps"])
            rgb = [] if steps.steps[:1] and isinstance(steps.steps[0], preprocess.ToRGB) else [preprocess.ToRGB()]
            self._transform = transforms.Compose([*rgb, *steps.steps, create_transform(**config, is_training=False)])
        return self._transform

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices from probabilities by the saved rule (argmax, or the saved cut points)."""
        from .grades import apply_thresholds, expected_grade

        if self.meta["decision"] == "thresholds":
            return apply_thresholds(expected_grade(probs), self.thresholds)
        return probs.argmax(1)

    @torch.inference_mode()
    def predict_proba(self, batch: torch.Tensor, network: nn.Module | None = None) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` of a batch of transformed images (float32).

        ``network`` replaces :attr:`network` (e.g. :meth:`inference_network`'s faster copy).
        """
        network = network or self.network
        device = next(network.parameters()).device
        x = batch.to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return network(x).float().softmax(1).cpu().numpy()

    def inference_network(self) -> nn.Module:
        """A copy of the network with its batch norms folded (checked against it), channels-last on a CPU.

        The same function in fewer passes over memory: measured on 2 busy CPU cores, Lite0 at
        224 px, 64 photos: 6.6 s -> 3.7 s.
        """
        from .frozen import folded_copy

        size = int(self.meta["preprocessing"]["backbone_transform"]["input_size"][-1])
        network = folded_copy(self.network.eval(), size)
        if next(network.parameters()).device.type == "cpu":
            network = network.to(memory_format=torch.channels_last)
        return network


def _read_meta(folder: Path) -> dict[str, Any]:
    for name in (META_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ModelFileError(f"{folder / name} is missing: a saved model is a folder with {META_FILE} and "
                                 f"{WEIGHTS_FILE}, as tl.export.save_model writes it.")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{folder / META_FILE} is not valid JSON ({err}): the file is damaged; "
                             "save the model again.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{folder / META_FILE} is not a tutorial_lib model description (no "
                             f"\"format\": \"{FORMAT}\").")
    saved = str(meta.get("library_version", "?"))
    if saved.split(".")[0] != __version__.split(".")[0] or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{folder} was saved by tutorial_lib {saved} (model format {meta.get('format_version')}); this is "
            f"tutorial_lib {__version__} (format {FORMAT_VERSION}). Fix: install tutorial_lib=={saved} to use it, "
            "or re-run the notebook that trained it to save it again with this version.")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or len(classes) != meta.get("num_classes"):
        raise ModelFileError(f"{folder / META_FILE} has no usable class list (\"classes\": {classes!r}, "
                             f"\"num_classes\": {meta.get('num_classes')!r}): predictions would have no names. "
                             "Fix: save the model again with classes=data.classes.")
    return meta


def _model_folder(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, WEIGHTS_FILE):
        return path.parent
    if not path.exists():
        raise ModelFileError(f"{path} does not exist: give the folder that tl.export.save_model wrote "
                             "(e.g. outputs/models/clothing).")
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu") -> ExportedModel:
    """Rebuild a model saved by :func:`save_model` (the folder, or a file in it), in eval mode on ``device``.

    Raises :class:`ModelFileError` for a missing file, a weights file that does not match its
    SHA-256 (truncated or changed), a damaged safetensors header, a missing class list, or a
    model saved by another major version of the library.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import load_backbone

    folder = _model_folder(path)
    meta = _read_meta(folder)
    weights = folder / WEIGHTS_FILE
    if file_sha256(weights) != meta.get("weights_sha256"):
        raise ModelFileError(f"{weights} does not match the SHA-256 recorded in {META_FILE}: it is truncated, "
                             "damaged or was changed after saving. Fix: copy the model folder again, or save it again.")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{weights} is not a readable safetensors file ({err}). Fix: save the model again.") from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        backbone = load_backbone(meta["backbone"], int(meta["num_classes"]), pretrained=False, download=False)
    if "transform_input" in meta:
        backbone.model.transform_input = bool(meta["transform_input"])
    try:
        backbone.model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{weights} does not fit a {meta['backbone']} network with {meta['num_classes']} "
                             f"classes ({str(err)[:300]}). Fix: save the model again.") from err
    return ExportedModel(backbone.model.to(device).eval(), meta, folder)


def as_model(model_or_path: ExportedModel | str | Path, device: torch.device | str = "cpu") -> ExportedModel:
    """A loaded model as it is (moved to ``device``), or :func:`load_model` of a path."""
    if isinstance(model_or_path, ExportedModel):
        model_or_path.network.to(device)
        return model_or_path
    return load_model(model_or_path, device)


class _Probabilities(nn.Module):
    """The network followed by a softmax: what the ONNX file computes."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).softmax(1)  # (batch, 3, H, W) -> (batch, n_classes)


def preprocessing_description(model: ExportedModel) -> dict[str, Any]:
    """What to do to a photo before the ONNX network: the saved steps, resize, centre crop, normalise."""
    config = model.meta["preprocessing"]["backbone_transform"]
    size = int(config["input_size"][-1])
    resize = int(np.floor(size / float(config.get("crop_pct") or 1.0)))
    return {
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB"},
        "output": {"name": "probabilities", "shape": ["batch", len(model.classes)], "classes": model.classes},
        "steps": [
            "decode the file as 8-bit RGB (EXIF orientation applied; alpha composited on white)",
            *[f"tutorial_lib.preprocess.{s['name']}({s['params']})" for s in model.meta["preprocessing"]["steps"]
              if s["name"] != "ToRGB"],
            f"resize the shorter side to {resize} px ({config['interpolation']} interpolation, aspect ratio kept)",
            f"crop the centre {size} x {size} px",
            "divide by 255 (values in [0, 1])",
            f"subtract mean {list(config['mean'])} and divide by std {list(config['std'])}, per RGB channel",
        ],
        "torchvision_transform": repr(model.transform),
        "decision": model.meta["decision"], "thresholds": model.meta.get("thresholds"),
        "ordinal": model.ordinal,
        "library_version": model.meta["library_version"], "source_weights_sha256": model.meta["weights_sha256"],
    }


def export_onnx(model_or_path: ExportedModel | str | Path, out: str | Path, *, opset: int = 17,
                check: bool = True) -> Path:
    """Write the network (with its softmax) as ONNX with a dynamic batch axis, and its preprocessing beside it.

    The preprocessing goes to ``<out stem>.preprocessing.json``. With ``check`` the file is run
    with onnxruntime on random inputs and compared with PyTorch (max abs difference < 1e-4).
    """
    model = as_model(model_or_path, "cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(model.meta["preprocessing"]["backbone_transform"]["input_size"][-1])
    wrapper = _Probabilities(model.network).eval()
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wrapper, (example,), str(out), input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    doc = out.with_name(f"{out.stem}.preprocessing.json")
    doc.write_text(json.dumps(preprocessing_description(model), indent=1) + "\n")
    if check:
        diff = onnx_max_difference(out, model, example)
        if not diff < 1e-4:
            raise RuntimeError(f"{out}: onnxruntime's probabilities differ from PyTorch's by {diff:.2e} (> 1e-4).")
    return out


@torch.no_grad()
def onnx_max_difference(onnx_path: str | Path, model: ExportedModel, batch: torch.Tensor) -> float:
    """Max abs difference between onnxruntime's and PyTorch's probabilities on ``batch`` (transformed images)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": batch.numpy().astype(np.float32)})[0]
    return float(np.abs(got - model.predict_proba(batch)).max())
