"""One results file for the whole tutorial.

Every notebook records its metrics into ``outputs/results.json`` (or the
``RESULTS_PATH`` it is given), laid out as::

    {task: {"dataset", "split", "n_train", "n_test", "backbone",
            "methods": {method: {metric: value}}},
     "runtime": {notebook: {"seconds", "peak_rss_mb"}}}

Writes are atomic (a temporary file renamed over the old one), so a run that is
killed never leaves a half-written file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

TASKS = ("dr", "clothing", "tagging")
METHODS = ("svm", "linear_probe", "finetune_top", "finetune_full", "independent_heads", "cnn_lstm")
METRICS = ("accuracy", "balanced_accuracy", "qwk", "macro_f1", "micro_f1", "exact_match", "field_accuracy")
DEFAULT_RESULTS_PATH = Path("outputs") / "results.json"

# The talk's own figures, on its own (different, larger, full-resolution) data: shown beside ours, never as ours.
TALK_RESULTS = {
    "dr": {"dataset": "Kaggle DR 2015 fundus photos (talk)", "metric": "score as reported (metric not stated)",
           "svm": 0.66, "finetuned_googlenet": 0.79},
    "clothing": {"dataset": "fashion photos (talk)", "metric": "accuracy", "svm": 0.72, "finetuned_googlenet": 0.93},
}


def results_path(path: str | Path | None = None) -> Path:
    """The results file: ``path`` if given, else ``outputs/results.json`` under the project root."""
    if path:
        return Path(path)
    from .data import PROJECT_ROOT

    return PROJECT_ROOT / DEFAULT_RESULTS_PATH


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The recorded results, or an empty dict when nothing is recorded yet."""
    path = results_path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run the notebooks.") from err


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays to JSON-friendly Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"Refusing to record a non-finite metric value ({value}).")
        return value
    return value


def _save(results: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")


def record_metrics(task: str, method: str, metrics: Mapping[str, Any], *, dataset: str, split: str,
                   n_train: int, n_test: int, backbone: str | None = None,
                   path: str | Path | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record ``metrics`` of ``method`` on ``task``; return the task's entry.

    Unknown task, method or metric names are refused, so a typo cannot create a
    result that the results notebook and the tests never read.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {TASKS}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {METHODS}.")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; use {METRICS}.")
    path = results_path(path)
    results = load_results(path)
    entry = results.setdefault(task, {"methods": {}})
    entry.update({"dataset": dataset, "split": split, "n_train": int(n_train), "n_test": int(n_test),
                  "backbone": backbone})
    entry.setdefault("methods", {})[method] = _plain(dict(metrics))
    if extra:
        entry.setdefault("details", {})[method] = _plain(dict(extra))
    _save(results, path)
    return entry


def record_runtime(notebook: str, seconds: float, peak_rss_mb: float, path: str | Path | None = None,
                   **extra: Any) -> None:
    """Record a notebook's wall time and peak memory under ``runtime``."""
    path = results_path(path)
    results = load_results(path)
    results.setdefault("runtime", {})[notebook] = _plain({"seconds": round(float(seconds), 2),
                                                          "peak_rss_mb": round(float(peak_rss_mb), 1), **extra})
    _save(results, path)


def talk_comparison(task: str, ours: Mapping[str, Mapping[str, float]], metric: str) -> "pd.DataFrame":
    """Our methods beside the talk's figures for ``task``, one row each, the data set named on every row."""
    import pandas as pd

    talk = TALK_RESULTS[task]
    # the talk's figure goes in our metric's column only when it is the same metric
    talk_column = metric if talk["metric"] == metric else f"talk's figure ({talk['metric']})"
    rows = [{"method": name, "data": "ours (test split)", metric: float(m[metric])}
            for name, m in ours.items() if metric in m]
    rows += [{"method": f"talk: {name.replace('_', ' ')}", "data": talk["dataset"], talk_column: talk[name]}
             for name in ("svm", "finetuned_googlenet")]
    return pd.DataFrame(rows).set_index("method")
