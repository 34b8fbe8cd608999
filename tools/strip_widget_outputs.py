"""Remove ipywidgets outputs (stored progress bars) and widget state from notebooks, in place.

A stored widget has no live kernel behind it: JupyterLab shows it as "Loading widget..." or as
a frozen "0%" bar. Other outputs are kept as they are.

    .venv/bin/python tools/strip_widget_outputs.py notebooks/*.ipynb
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widgets(path: Path) -> int:
    """Strip one notebook; return how many outputs were removed (the file is rewritten only if it changed)."""
    nb = nbformat.read(path, as_version=4)
    removed = 0
    for cell in nb.cells:
        outputs = cell.get("outputs")
        if outputs:
            kept = [o for o in outputs if WIDGET_VIEW not in o.get("data", {})]
            removed += len(outputs) - len(kept)
            cell.outputs = kept
    state = nb.metadata.pop("widgets", None) is not None
    if removed or state:
        nbformat.write(nb, path)
    return removed


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: strip_widget_outputs.py NOTEBOOK.ipynb ...")
    for name in sys.argv[1:]:
        print(f"{name}: {strip_widgets(Path(name))} widget output(s) removed")
