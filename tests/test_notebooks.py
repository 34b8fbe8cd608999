"""Every committed notebook runs under papermill with injected parameters.

`make test` also runs nbval, which re-executes each committed notebook as it is (its default
profile) and compares the cells tagged nbval-check-output with the committed outputs. Running
every notebook twice in its default profile would double the suite's time, so the papermill
runs here use the `quick` profile: they check that parameters are injected, honoured and
recorded, and that every code path runs.
"""
from __future__ import annotations

import json

import nbformat
import papermill
import pytest

import tutorial_lib.runner as tlrun

NOTEBOOKS = tlrun.discover_notebooks()


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_papermill(notebook, tmp_path):
    results = tmp_path / "results.json"
    parameters = {"FIGURES_DIR": str(tmp_path / "figures")}
    declared = papermill.inspect_notebook(str(notebook))
    if "PROFILE" in declared:
        parameters["PROFILE"] = "quick"
    if "CACHE_DIR" in declared:
        parameters["CACHE_DIR"] = str(tmp_path / "cache")
    tlrun.run_notebooks([notebook], output_dir=tmp_path, parameters=parameters, results=results,
                        echo=lambda *_: None)
    executed = nbformat.read(tmp_path / notebook.name, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert json.loads(results.read_text())["runtime"][notebook.stem]["seconds"] > 0
    assert list((tmp_path / "figures").glob("*.png"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_parameter_can_be_overridden(notebook):
    """papermill must parse every assignment of the parameters cell (quotes in a comment break its parser)."""
    import ast

    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = [node.targets[0].id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)]
    assert list(papermill.inspect_notebook(str(notebook))) == assigned


def test_committed_notebooks_are_clean():
    """Executed top to bottom, a tagged parameters cell, no machine paths in outputs."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        assert counts == list(range(1, len(code) + 1)), f"{path.name} is not executed top to bottom"
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell must be 'parameters'"
        text = path.read_text()
        for fragment in ('"/root/', '"/tmp/', '"/home/', "/work/", "site-packages"):
            assert fragment not in text, f"{path.name} contains a machine path ({fragment})"
