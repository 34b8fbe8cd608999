"""Helpers for the transfer-learning tutorial notebooks.

Import it once at the top of a notebook: ``import tutorial_lib as tl``, then use
``tl.data``, ``tl.models``, ``tl.env``, ``tl.report`` and ``tl.plots``; ``tl.predict(model, images)``
applies a model saved with ``tl.export.save_model``. Submodules
load on first use, so importing the package is cheap and has no side effects.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["baselines", "checkpoint", "data", "distributed", "env", "explain", "export", "frozen", "googlenet", "grades", "handcrafted", "inference", "loop", "metrics", "models", "plots", "preprocess", "profiles", "report", "tagging", "train"]


def __getattr__(name: str) -> Any:
    if name == "predict":  # tl.predict(model, images): a function, from the inference module
        return importlib.import_module(".inference", __name__).predict
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'tutorial_lib' has no attribute {name!r}")
