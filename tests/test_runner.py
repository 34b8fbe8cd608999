"""tutorial_lib.tools.runner and the CLI: batch execution with papermill."""
from __future__ import annotations

import json
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import tutorial_lib.tools.runner as tlrun
from tutorial_lib.tools.cli import main


def _notebook(path, body: str, params: str = "SIZE = 3\nNAME = 'x'\nRESULTS_PATH = ''"):
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[cell, new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("None", None), ("abc", "abc")])
def test_parse_value(text, value):
    assert tlrun.parse_value(text) == value


def test_discover_notebooks_keeps_the_order():
    names = [p.stem for p in tlrun.discover_notebooks()]
    assert names == sorted(names) and names[0] == "00_setup"
    assert [p.stem for p in tlrun.discover_notebooks(["00"])] == ["00_setup"]
    with pytest.raises(ValueError, match="No notebook matches"):
        tlrun.discover_notebooks(["99"])


def test_parameters_are_checked_before_running(tmp_path):
    nb = _notebook(tmp_path / "01_a.ipynb", "print(SIZE)")
    assert tlrun.check_parameters(nb, {"SIZE": 5, "OTHER": 1}) == {"SIZE": 5}
    with pytest.raises(ValueError, match="SIZE expects a number"):
        tlrun.check_parameters(nb, {"SIZE": "big"})
    with pytest.raises(ValueError, match=r"\['SIZ'\] are not declared"):
        tlrun.run_notebooks([nb], output_dir=tmp_path / "out", parameters={"SIZ": 4}, results=tmp_path / "r.json")


def test_run_records_time_and_kernel_memory(tmp_path):
    # The notebook allocates ~200 MB, so the kernel's peak memory must show it.
    body = "import numpy as np\nblock = np.ones((SIZE, 1024, 1024, 25), dtype=np.uint8)\nprint(block.sum())"
    nb = _notebook(tmp_path / "01_alloc.ipynb", body)
    results = tmp_path / "results.json"
    runs = tlrun.run_notebooks([nb], output_dir=tmp_path / "out", parameters={"SIZE": 8}, results=results,
                               echo=lambda *_: None)
    executed = nbformat.read(tmp_path / "out" / "01_alloc.ipynb", as_version=4)
    assert str(8 * 1024 * 1024 * 25) in executed.cells[-1].outputs[0]["text"]
    runtime = json.loads(results.read_text())["runtime"]["01_alloc"]
    assert runtime["peak_rss_mb"] >= 200 and runtime["seconds"] > 0
    assert runs[0].peak_rss_mb == pytest.approx(runtime["peak_rss_mb"], abs=0.1)


def test_a_failing_notebook_names_the_cell(tmp_path, capsys):
    nb = _notebook(tmp_path / "02_broken.ipynb", "raise RuntimeError('the model exploded')")
    with pytest.raises(tlrun.NotebookFailed, match=r"02_broken.ipynb failed in cell \[\d\] `raise RuntimeError\('the model exploded'\)`: RuntimeError: the model"):
        tlrun.run_notebooks([nb], output_dir=tmp_path / "out", results=tmp_path / "r.json", echo=lambda *_: None)


def test_cli_reports_failure_with_nonzero_exit(monkeypatch, tmp_path, capsys):
    nb = _notebook(tmp_path / "03_broken.ipynb", "1/0")
    monkeypatch.setattr(tlrun, "discover_notebooks", lambda select: [nb])
    code = main(["run", "--output-dir", str(tmp_path / "out"), "--results", str(tmp_path / "r.json")])
    assert code == 1
    assert re.search(r"03_broken.ipynb failed in cell \[\d\] `1/0`: ZeroDivisionError", capsys.readouterr().err)


def test_cli_lists_datasets(capsys):
    assert main(["datasets"]) == 0
    assert "retinamnist_224" in capsys.readouterr().out
