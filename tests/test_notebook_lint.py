"""The committed notebooks read as a course, not a lab book.

- every markdown cell is short (a wall of text belongs in docs/);
- no widget outputs (a saved notebook cannot redraw a progress-bar widget: it shows a frozen "0%");
- each notebook has a "What we learned" section followed by "Exercises";
- every number in "What we learned" is printed somewhere in that notebook's outputs (typed numbers drift);
- notebooks 00-05 carry no development vocabulary (targets, budgets, floors, ...) and no nbval comments
  (nbval reads the `nbval-check-output` cell tag instead);
- docs/experiments.md is what docs/make_experiments.py makes of docs/experiments.csv.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TEACHING = [p for p in NOTEBOOKS if p.name[:2] <= "05"]  # 06 shows the results against the talk
MAX_MARKDOWN_LINES = 22
FORBIDDEN = re.compile(r"\b(issues?|sessions?|targets?|budgets?|floors?|in our trials?|gathered for this project)\b"
                       r"|NBVAL_\w+", re.IGNORECASE)
NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?")
WIDGET = "application/vnd.jupyter.widget-view+json"


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _heading(cell) -> str:
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    return first.lstrip("#").strip().lower() if first.startswith("#") else ""


def _section(nb, title: str) -> str | None:
    """The markdown of the section whose heading is ``title``, up to the next heading of any cell."""
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and _heading(cell) == title:
            text = [cell.source]
            for later in cells[i + 1:]:
                if later.cell_type != "markdown" or _heading(later):
                    break
                text.append(later.source)
            return "\n".join(text)
    return None


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            for mime in ("text/plain", "text/html", "text/markdown"):
                value = output.get("data", {}).get(mime)
                if value:
                    parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def _numbers(text: str) -> list[str]:
    """The numbers of a markdown text, outside inline code and outside names like 'notebook 03'."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\bnotebooks? \d\d(?:[–-]\d\d)?\b|\b\d\d_\w+", " ", text)
    return [m.group(0).lstrip("+-−").replace(",", "") for m in NUMBER.finditer(text)]


def _printed(number: str, outputs: str) -> bool:
    plain = outputs.replace(",", "")
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", plain) is not None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_markdown_cells_are_short(path):
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(_read(path).cells)
            if c.cell_type == "markdown" and len(c.source.splitlines()) > MAX_MARKDOWN_LINES]
    assert not long, f"{path.name}: markdown cells over {MAX_MARKDOWN_LINES} lines (cell, lines): {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_widget_outputs(path):
    nb = _read(path)
    widgets = [i for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if WIDGET in o.get("data", {})]
    assert not widgets, f"{path.name}: widget outputs (frozen progress bars) in cells {sorted(set(widgets))}"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state saved in the notebook's metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_what_we_learned_then_exercises(path):
    nb = _read(path)
    headings = [_heading(c) for c in nb.cells if c.cell_type == "markdown"]
    assert "what we learned" in headings, f"{path.name}: no '## What we learned' section"
    assert "exercises" in headings, f"{path.name}: no '## Exercises' section"
    assert headings.index("what we learned") < headings.index("exercises"), \
        f"{path.name}: 'Exercises' must follow 'What we learned'"
    bullets = [line for line in _section(nb, "what we learned").splitlines() if line.lstrip().startswith("- ")]
    assert 3 <= len(bullets) <= 6, f"{path.name}: 'What we learned' has {len(bullets)} takeaways (3-6 wanted)"
    exercises = [line for line in _section(nb, "exercises").splitlines() if re.match(r"\s*\d+\.\s", line)]
    assert 3 <= len(exercises) <= 5, f"{path.name}: {len(exercises)} numbered exercises (3-5 wanted)"
    assert re.search(r"predict", _section(nb, "exercises"), re.IGNORECASE), \
        f"{path.name}: no exercise asks to predict an effect before running"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_numbers_in_what_we_learned_are_printed_by_the_notebook(path):
    nb = _read(path)
    section = _section(nb, "what we learned")
    if section is None:
        pytest.fail(f"{path.name}: no '## What we learned' section")
    outputs = _outputs_text(nb)
    missing = [n for n in _numbers(section.split("\n", 1)[-1]) if not _printed(n, outputs)]
    assert not missing, (f"{path.name}: numbers in 'What we learned' that no output of the notebook prints: "
                         f"{missing}. Copy them from the outputs after re-executing it.")


@pytest.mark.parametrize("path", TEACHING, ids=[p.stem for p in TEACHING])
def test_no_development_vocabulary(path):
    hits = [(i, m.group(0)) for i, c in enumerate(_read(path).cells) for m in FORBIDDEN.finditer(c.source)]
    assert not hits, f"{path.name}: development notes in a learner notebook (cell, word): {hits}"


def test_experiments_page_is_generated_from_its_csv():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "make_experiments.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_lint_helpers_find_typed_numbers():
    """The number check itself: a typed figure is caught, printed ones and code names are not."""
    outputs = "accuracy 0.927, train=3,068\nbest: 0.54"
    assert _numbers("- **0.927** on 3,068 photos, `TOP_STAGES=2`, notebook 02") == ["0.927", "3068"]
    assert all(_printed(n, outputs) for n in ["0.927", "3068", "0.54"])
    assert not _printed("0.93", outputs) and not _printed("0.5", outputs) and not _printed("27", outputs)
