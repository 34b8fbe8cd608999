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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ._io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

TASKS = ("dr", "clothing", "tagging")
METHODS = ("majority_class", "svm", "linear_probe", "finetune_top", "finetune_top_ensemble", "finetune_full", "independent_heads", "cnn_lstm")
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


def output_folder(folder: str | Path | None, name: str, results: str | Path | None = None) -> Path:
    """Where a notebook writes ``name`` ("figures", "cache"): ``folder`` if given, else beside the results file."""
    return Path(folder) if folder else results_path(results).parent / name


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The recorded results, or an empty dict when nothing is recorded yet."""
    path = results_path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run the notebooks.") from err


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
    result that the results notebook and the tests never read. A task recorded on
    another ``dataset`` before is started afresh (with a warning), so one task's methods
    always come from one data set; each method's ``details`` name its dataset.
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
    if entry.get("dataset") not in (None, dataset) and entry.get("methods"):
        import warnings

        warnings.warn(f"{path}: {task} results were on {entry['dataset']!r}; recording on {dataset!r} starts "
                      f"{task} afresh (dropped: {', '.join(entry['methods'])}).", stacklevel=2)
        entry = results[task] = {"methods": {}}
    entry.update({"dataset": dataset, "split": split, "n_train": int(n_train), "n_test": int(n_test)})
    if backbone is not None or "backbone" not in entry:
        entry["backbone"] = backbone
    entry.setdefault("methods", {})[method] = _plain(dict(metrics))
    entry.setdefault("details", {})[method] = _plain({**dict(extra or {}), "dataset": dataset,
                                                      **({"backbone": backbone} if backbone else {})})
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


# --------------------------------------------------------------------------- the results notebook (06)

# The headline metric of each task, in the order the results notebook shows them.
HEADLINE = {"dr": ("qwk", "accuracy", "balanced_accuracy"), "clothing": ("accuracy", "macro_f1"),
            "tagging": ("micro_f1", "exact_match", "macro_f1")}

# How far below the reference run a default-profile result may fall before the results notebook (and with it
# `make test`, which executes it after notebooks 02-05) reports a regression. DR's test split is small and its
# decision thresholds are tuned on a small validation split, so it gets more room.
FLOOR_TOLERANCE = {"dr": 0.05, "clothing": 0.03, "tagging": 0.03}


def reference_results() -> dict[str, Any]:
    """The reference run shipped with the package (default profile, seed 0, CPU): the floors' starting point.

    Made by ``tools/make_reference_results.py`` from the ``results.json`` of such a run.
    """
    return json.loads((Path(__file__).with_name("reference_results.json")).read_text())


def _profile(entry: Mapping[str, Any], method: str) -> str | None:
    return entry.get("details", {}).get(method, {}).get("profile")


def check_floors(results: Mapping[str, Any], reference: Mapping[str, Any] | None = None,
                 tolerance: Mapping[str, float] | None = None) -> "pd.DataFrame":
    """Each headline metric of ``results`` against the reference run minus a tolerance, one row each.

    Only like is compared with like: a result is checked when it was made on the same data set, in the same
    profile and with the same seed as the reference; anything else gets ``status`` "not comparable" and the
    reason. A reference metric that was not recorded at all is "missing". Nothing is raised here: see
    :func:`assert_floors`.
    """
    import pandas as pd

    reference = reference_results() if reference is None else reference
    tolerance = {**FLOOR_TOLERANCE, **(tolerance or {})}
    rows = []
    for task, ref_entry in reference.items():
        if task not in TASKS:
            continue
        entry = results.get(task, {})
        for method, ref_metrics in ref_entry["methods"].items():
            measured = entry.get("methods", {}).get(method)
            ref_details = ref_entry.get("details", {}).get(method, {})
            details = entry.get("details", {}).get(method, {})
            reason = None
            if measured is None:
                reason = "missing: not recorded"
            elif entry.get("dataset") != ref_entry.get("dataset"):
                reason = f"not comparable: data set {entry.get('dataset')!r}"
            elif details.get("profile") != ref_details.get("profile"):
                reason = f"not comparable: profile {details.get('profile')!r}"
            elif details.get("seed") != ref_details.get("seed"):
                reason = f"not comparable: seed {details.get('seed')!r}"
            for metric in HEADLINE[task]:
                if metric not in ref_metrics:
                    continue
                floor = round(ref_metrics[metric] - tolerance[task], 4)
                value = None if measured is None else measured.get(metric)
                if reason:
                    status = reason
                elif value is None:
                    status = "missing: metric not recorded"
                else:
                    status = "ok" if value >= floor else "BELOW FLOOR"
                rows.append({"task": task, "method": method, "metric": metric, "reference": ref_metrics[metric],
                             "floor": floor, "measured": value, "status": status})
    return pd.DataFrame(rows, columns=["task", "method", "metric", "reference", "floor", "measured", "status"])


def assert_floors(checked: "pd.DataFrame") -> None:
    """Raise ``AssertionError`` naming every result below its floor (the rows of :func:`check_floors`)."""
    below = checked[checked["status"] == "BELOW FLOOR"]
    if len(below):
        lines = [f"{r.task}/{r.method} {r.metric}: {r.measured:.4f} < floor {r.floor:.4f} (reference {r.reference:.4f})"
                 for r in below.itertuples()]
        raise AssertionError("Accuracy regression against the reference run:\n  " + "\n  ".join(lines))


def method_table(results: Mapping[str, Any], task: str) -> "pd.DataFrame":
    """One row per recorded method of ``task`` with its headline metrics (and, for tagging, the article type)."""
    import pandas as pd

    methods = results.get(task, {}).get("methods", {})
    order = [m for m in METHODS if m in methods]
    rows = {}
    for method in order:
        metrics = methods[method]
        row = {metric: metrics.get(metric) for metric in HEADLINE[task]}
        if task == "tagging":
            row["articleType accuracy"] = metrics.get("field_accuracy", {}).get("articleType")
        row["profile"] = _profile(results[task], method)
        row["dataset"] = results[task].get("details", {}).get(method, {}).get("dataset", results[task].get("dataset"))
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def results_markdown(results: Mapping[str, Any], floors: "pd.DataFrame | None" = None) -> str:
    """The results as a markdown report: per task, our methods (test split) and the talk's figures beside them."""
    lines = ["# Results", "",
             "Test-split metrics recorded by the notebooks (`outputs/results.json`). The talk's figures come from "
             "its own, different data and are shown beside ours, never in place of them.", ""]
    for task in TASKS:
        entry = results.get(task)
        if not entry:
            lines += [f"## {task}", "", "Nothing recorded yet.", ""]
            continue
        table = method_table(results, task)
        backbone = f", backbone {entry['backbone']}" if entry.get("backbone") else ""
        lines += [f"## {task}: {entry.get('dataset')} ({entry.get('split')} split, n_train={entry.get('n_train')}, "
                  f"n_test={entry.get('n_test')}{backbone})", "",
                  _markdown_table(table.reset_index()), ""]
        if task in TALK_RESULTS:
            talk = TALK_RESULTS[task]
            lines += [f"The talk ({talk['dataset']}; {talk['metric']}): feature SVM {talk['svm']:.2f}, "
                      f"fine-tuned GoogLeNet {talk['finetuned_googlenet']:.2f}.", ""]
    runtime = results.get("runtime", {})
    if runtime:
        import pandas as pd

        times = pd.DataFrame([{"notebook": nb, "seconds": r["seconds"], "peak RSS (MB)": r["peak_rss_mb"]}
                              for nb, r in sorted(runtime.items())])
        lines += ["## Run time (wall seconds, peak memory of the notebook's kernel)", "",
                  _markdown_table(times, digits=0), ""]
    if floors is not None and len(floors):
        lines += ["## Regression check against the reference run", "", _markdown_table(floors), ""]
    return "\n".join(lines)


def _markdown_table(frame: "pd.DataFrame", digits: int = 3) -> str:
    """``frame`` as a markdown table: floats to ``digits`` decimals, blanks for missing values, numbers right-aligned."""
    from pandas.api.types import is_numeric_dtype

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    align = ["right" if is_numeric_dtype(frame[column]) else "left" for column in frame.columns]
    return frame.map(cell).to_markdown(index=False, disable_numparse=True, colalign=align)
