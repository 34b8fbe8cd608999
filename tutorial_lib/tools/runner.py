"""Run the ordered notebooks with papermill: the batch path behind ``make demo``.

Each notebook runs in its own worker process, so its wall time and the peak
resident memory of its kernel can be measured and recorded in ``results.json``
under ``runtime``. Parameters are checked against each notebook's tagged
``parameters`` cell before anything runs.
"""
from __future__ import annotations

import ast
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data import PROJECT_ROOT
from ..report import record_runtime, results_path

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
DEFAULT_OUTPUT_DIR = PROJECT_ROOT / "outputs" / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised an error; the message names the notebook and the failing cell."""


@dataclass
class NotebookRun:
    """What one notebook run produced."""

    notebook: str
    output: Path
    seconds: float
    peak_rss_mb: float


def discover_notebooks(select: Sequence[str] | None = None, folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ordered notebooks (``NN_name.ipynb``), optionally only those whose name starts with one of ``select``."""
    notebooks = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not select:
        return notebooks
    chosen = [p for p in notebooks if any(p.name.startswith(s) or p.stem == s for s in select)]
    unknown = [s for s in select if not any(p.name.startswith(s) or p.stem == s for p in notebooks)]
    if unknown:
        raise ValueError(f"No notebook matches {unknown}; available: {[p.stem for p in notebooks]}.")
    return chosen


def parse_value(text: str) -> Any:
    """Parse a ``-p NAME VALUE`` value: int, float, true/false, none, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_value(notebook: Path, name: str, value: Any, default_text: str | None) -> Any:
    """One parameter's value, checked against its default's type; returns the value to inject."""
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"{notebook.name}: parameter {name} must be a plain number, true/false or text, "
                         f"got a {type(value).__name__}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{notebook.name}: parameter {name} must be a finite number, got {value!r}.")
    if isinstance(value, str) and any(ord(c) < 32 for c in value):
        raise ValueError(f"{notebook.name}: parameter {name} contains a control character (newline, tab, ...): "
                         f"{value!r}.")
    try:
        default = ast.literal_eval(default_text) if default_text is not None else None
    except (ValueError, SyntaxError):
        return value  # an expression: accept any value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{notebook.name}: parameter {name} expects true/false, got {value!r}.")
    elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{notebook.name}: parameter {name} expects a number (default {default_text}), "
                         f"got {value!r}.")
    elif isinstance(default, int) and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{notebook.name}: parameter {name} expects a whole number (default {default_text}), "
                             f"got {value!r}.")
        value = int(value)
    elif isinstance(default, str) and name in PARAMETER_RANGES:  # a number or a word, e.g. IMAGE_SIZE = "auto"
        if isinstance(value, str) and value != default:
            raise ValueError(f"{notebook.name}: parameter {name} expects a number or {default!r}, got {value!r}.")
    elif isinstance(default, str) and not isinstance(value, str):
        value = str(value)  # e.g. -p DATA_DIR 2024 is still a folder name
    return value


def _check_choice(notebook: Path, name: str, value: Any) -> None:
    """PROFILE and DEVICE have a fixed set of values: refuse a typo before a kernel starts."""
    if name == "PROFILE":
        from ..profiles import PROFILES

        allowed = ("auto", *PROFILES)
        if value not in allowed:
            raise ValueError(f"{notebook.name}: PROFILE {value!r} is not one of {', '.join(allowed)}.")
    elif name == "DEVICE":
        from ..env import DEVICE_CHOICES

        text = str(value).lower()
        if text not in DEVICE_CHOICES and not (text.startswith("cuda:") and text[5:].isdigit()):
            raise ValueError(f"{notebook.name}: DEVICE {value!r} is not one of {', '.join(DEVICE_CHOICES)} "
                             "(or cuda:N).")


# The numeric parameters' ranges: (lowest, highest, what a special value means). Checked before a kernel starts.
PARAMETER_RANGES: dict[str, tuple[float, float | None, str]] = {
    "SEED": (0, None, ""), "EPOCHS": (0, None, "0: the profile's"), "TOP_STAGES": (0, None, "0: the profile's"),
    "IMAGE_SIZE": (16, None, "0: the profile's"), "ENSEMBLE": (1, None, ""), "NUM_WORKERS": (0, None, ""),
    "THREADS": (0, None, "0: torch's default"), "MIN_COUNT": (1, None, ""), "BEAM_SIZE": (1, None, ""),
    "N_JOBS": (1, None, "-1: every core"), "VAL_FRACTION": (0, 1, "a fraction strictly between 0 and 1"),
}


def _check_range(notebook: Path, name: str, value: Any) -> None:
    """Refuse a number outside the parameter's range (``-p IMAGE_SIZE -5``, ``-p EPOCHS -2``) with the range."""
    if name not in PARAMETER_RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high, special = PARAMETER_RANGES[name]
    allowed = {"0": 0, "-1": -1}.get(special.split(":")[0], None)
    if value == allowed:
        return
    if name == "VAL_FRACTION":
        ok = low < value < high
    else:
        ok = value >= low and (high is None or value <= high)
    if not ok:
        span = f"at least {low}" if high is None else f"between {low} and {high}"
        note = f" ({special})" if special else ""
        raise ValueError(f"{notebook.name}: parameter {name} must be {span}{note}, got {value!r}.")


def resolve_path_parameter(name: str, value: Any, cwd: Path | None = None) -> Any:
    """Make a ``*_DIR`` / ``*_PATH`` value absolute against the caller's folder.

    Notebooks run with their own folder as working directory, so ``-p DATA_DIR photos``
    would otherwise be looked for under ``notebooks/``. ``DATA_DIR`` (an input) must exist.
    An empty value keeps its meaning ("use the default").
    """
    if not (name.endswith("_DIR") or name.endswith("_PATH")) or not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else (cwd or Path.cwd()) / path).resolve()
    if name == "DATA_DIR" and not path.exists():
        raise ValueError(f"DATA_DIR {value!r} does not exist (looked for {path}). Pass a folder of class "
                         "subfolders or a CSV manifest, relative to where you run the command, or an absolute path.")
    return str(path)


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Keep the parameters this notebook declares; refuse values of the wrong type or an unknown choice.

    Values must be plain scalars of the default's type (a whole number where the default
    is one); ``PROFILE`` and ``DEVICE`` must name a real profile and device; ``*_DIR``
    and ``*_PATH`` values become absolute paths. A parameter no selected notebook
    declares is refused by :func:`run_notebooks`.
    """
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(f"{notebook.name} has no cell tagged 'parameters'.")
    accepted = {}
    for name, value in parameters.items():
        if name not in declared:
            continue
        value = _check_value(notebook, name, value, declared[name].get("default"))
        _check_choice(notebook, name, value)
        _check_range(notebook, name, value)
        accepted[name] = resolve_path_parameter(name, value)
    return accepted


def _worker(notebook: str, output: str, parameters_json: str, cwd: str) -> int:
    """Execute one notebook; print a JSON line with the kernel's peak memory (or the error)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = json.loads(parameters_json)
    os.environ.setdefault("TUTORIAL_LIB_PROGRESS", "text")  # the kernel's progress bars: text, never widgets
    try:
        papermill.execute_notebook(notebook, output, parameters=parameters or None, cwd=cwd,
                                   progress_bar=False, log_output=False, kernel_name="python3")
    except PapermillExecutionError as err:
        import nbformat

        cells = nbformat.read(output, as_version=4).cells  # papermill adds an error banner cell: match by count
        failing = [c for c in cells if c.cell_type == "code" and c.get("execution_count") == err.exec_count]
        source = failing[0].source.strip().splitlines() if failing else []
        cell = f"cell [{err.exec_count}] `{source[0][:60] if source else ''}`"
        print(json.dumps({"error": f"{err.ename}: {err.evalue}", "cell": cell}), flush=True)
        return 1
    # The kernel is a child of this process and has been reaped: its peak RSS is in RUSAGE_CHILDREN (KiB).
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak_kib / 1024}), flush=True)
    return 0


def run_notebook(notebook: Path, output: Path, parameters: dict[str, Any] | None = None) -> NotebookRun:
    """Run one notebook in a worker process; raise :class:`NotebookFailed` naming the failing cell."""
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tutorial_lib.tools.runner", str(notebook), str(output),
         json.dumps(parameters or {}), str(notebook.parent)],
        capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0:
        where = report.get("cell", "start-up")
        detail = report.get("error") or proc.stderr.strip()[-2000:]
        raise NotebookFailed(f"{notebook.name} failed in {where}: {detail}\n"
                             f"The partly executed notebook is {output}.")
    return NotebookRun(notebook.stem, output, seconds, report["peak_rss_mb"])


def run_notebooks(notebooks: Sequence[Path], *, output_dir: Path = DEFAULT_OUTPUT_DIR,
                  parameters: dict[str, Any] | None = None, results: Path | None = None,
                  echo=print) -> list[NotebookRun]:
    """Run ``notebooks`` in order, recording each one's time and memory; stop at the first failure."""
    parameters = dict(parameters or {})
    if results is not None:
        parameters["RESULTS_PATH"] = str(results)
    checked = {nb: check_parameters(nb, parameters) for nb in notebooks}
    unused = set(parameters) - {name for accepted in checked.values() for name in accepted}
    if unused:
        raise ValueError(f"Parameter(s) {sorted(unused)} are not declared by any selected notebook's "
                         "parameters cell; check the spelling.")
    runs = []
    for i, notebook in enumerate(notebooks, 1):
        echo(f"[{i}/{len(notebooks)}] {notebook.name} ...")
        run = run_notebook(notebook, output_dir / notebook.name, checked[notebook])
        record_runtime(run.notebook, run.seconds, run.peak_rss_mb, path=results_path(results))
        echo(f"[{i}/{len(notebooks)}] {notebook.name}: {run.seconds:.1f} s, peak memory {run.peak_rss_mb:.0f} MB")
        runs.append(run)
    return runs


if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:5]))
