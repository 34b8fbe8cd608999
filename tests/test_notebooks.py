"""Every committed notebook runs under papermill with injected parameters.

`make test` also runs nbval, which re-executes each committed notebook as it is (its default
profile) and compares the cells tagged nbval-check-output with the committed outputs. Running
every notebook twice in its default profile would double the suite's time, so the papermill
runs here use the `quick` profile: they check that parameters are injected, honoured and
recorded, and that every code path runs. 03, 04 and 05 run once each, on the user's own data.
"""
from __future__ import annotations

import json

import nbformat
import papermill
import pytest

import tutorial_lib.tools.runner as tlrun

NOTEBOOKS = tlrun.discover_notebooks()


# 03, 04 and 05 run under papermill in the quick profile on the user's own data below (every code path of the quick
# profile, finetune_full included); nbval runs them on the embedded data in the default profile. Running them a
# third time here would add minutes and no path.
OWN_DATA_RUNS = ("03", "04", "05")
EMBEDDED_ONLY = [p for p in NOTEBOOKS if not p.stem.startswith(OWN_DATA_RUNS)]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", EMBEDDED_ONLY, ids=[p.stem for p in EMBEDDED_ONLY])
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
    assert_ran_cleanly(notebook, tmp_path / notebook.name, results, tmp_path / "figures")


def assert_ran_cleanly(notebook, executed_path, results, figures_dir):
    """The executed notebook holds no error output, saved a figure and had its run time recorded."""
    executed = nbformat.read(executed_path, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert list(figures_dir.glob("*.png")), "the notebook saved no figure"
    assert json.loads(results.read_text())["runtime"][notebook.stem]["seconds"] > 0
    return executed


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


# --------------------------------------------------------------------------- your own photographs


def _run_on_own_photos(name, tmp_path, data_dir, **parameters):
    """Run notebook ``name`` under papermill in the quick profile on ``data_dir``: no error, a figure, a run time."""
    notebook = next(p for p in NOTEBOOKS if p.stem.startswith(name))
    results = tmp_path / "results.json"
    parameters = {"PROFILE": "quick", "DATA_DIR": str(data_dir), "CACHE_DIR": str(tmp_path / "cache"),
                  "FIGURES_DIR": str(tmp_path / "figures"), **parameters}
    tlrun.run_notebooks([notebook], output_dir=tmp_path / "run", parameters=parameters, results=results,
                        echo=lambda *_: None)
    executed = assert_ran_cleanly(notebook, tmp_path / "run" / notebook.name, results, tmp_path / "figures")
    text = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return json.loads(results.read_text()), text


@pytest.mark.slow
def test_notebook_03_on_large_fundus_photographs_of_patients(tmp_path):
    """2000 x 1300 JPEGs, two eyes per patient: the backbone's input size, patients kept on one side of the split."""
    import tutorial_lib.data as tld
    from conftest import write_fundus_folder

    photos = write_fundus_folder(tmp_path / "fundus", n_patients=18, size=(2000, 1300))
    results, text = _run_on_own_photos("03", tmp_path, photos, GROUP_PATTERN=r"Patient(\d+)", ENSEMBLE=2)
    details = results["dr"]["details"]
    assert {d["image_size"] for d in details.values() if "image_size" in d} == {224}
    assert "-> input 224 px" in text and "grouped by Patient(\\d+)" in text
    data = tld.load_dataset(photos, seed=0, group_pattern=r"Patient(\d+)")  # the split the notebook printed
    assert f"groups per split train {len(set(data.train.groups))}" in text
    sides = [set(s.groups) for s in data.splits.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(list((tmp_path / "cache" / "prepared").glob("*.npy"))) >= 3  # the disc crops are cached


@pytest.mark.slow
def test_notebook_04_on_large_photos_of_mixed_sizes_and_orientations(tmp_path):
    from conftest import write_garment_photo

    sizes = [(1600, 1200), (1200, 1600), (2000, 900), (900, 1400)]
    for kind, garment in enumerate(["dress", "scarf", "hat"]):
        for i in range(10):
            write_garment_photo(tmp_path / "photos" / garment / f"IMG_{kind}{i:03d}.jpg", sizes[i % 4], kind,
                                seed=10 * kind + i, orientation=6 if i % 3 == 0 else 1)
    results, text = _run_on_own_photos("04", tmp_path, tmp_path / "photos")
    details = results["clothing"]["details"]
    assert {d["image_size"] for method, d in details.items() if method not in ("svm", "majority_class")} == {224}
    assert "-> resized and padded to 224 px" in text
    assert results["clothing"]["n_test"] == 6


@pytest.mark.slow
def test_notebook_05_on_a_catalogue_of_large_images(tmp_path):
    import pandas as pd

    from conftest import write_garment_photo

    root, rows = tmp_path / "catalogue", []
    for kind, (article, sub) in enumerate([("Tshirts", "Topwear"), ("Trousers", "Bottomwear")]):
        for i in range(24):
            product = 1000 * (kind + 1) + i
            write_garment_photo(root / "images" / f"{product}.jpg", (1200, 1600), kind, seed=product)
            rows.append({"id": product, "gender": ["Men", "Women"][i % 2], "masterCategory": "Apparel",
                         "subCategory": sub, "articleType": article, "baseColour": ["Blue", "Black"][i % 2],
                         "season": "Summer", "usage": "Casual"})
    pd.DataFrame(rows).to_csv(root / "styles.csv", index=False)
    results, text = _run_on_own_photos("05", tmp_path, root)
    details = results["tagging"]["details"]
    assert {details[m]["image_size"] for m in ("independent_heads", "cnn_lstm")} == {224}
    assert " at 224 px" in text
