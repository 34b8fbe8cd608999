"""tutorial_lib.progress: widgets only where a Jupyter frontend draws them, plain text elsewhere."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import tutorial_lib.progress as tlp

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("TUTORIAL_LIB_PROGRESS", "JPY_SESSION_NAME", "TQDM_MININTERVAL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_mode_follows_the_variable_and_the_kernel(clean_env):
    clean_env.delitem(sys.modules, "ipykernel", raising=False)
    assert tlp.progress_mode() == "text"  # a terminal or a plain Python process
    clean_env.setenv("JPY_SESSION_NAME", "notebooks/04.ipynb")
    assert tlp.progress_mode() == "text"  # not a kernel: the variable alone is not enough
    clean_env.setitem(sys.modules, "ipykernel", sys)
    assert tlp.progress_mode() == "widget"  # a kernel started by a Jupyter server
    clean_env.setenv("TUTORIAL_LIB_PROGRESS", " Text ")
    assert tlp.progress_mode() == "text"
    clean_env.setenv("TUTORIAL_LIB_PROGRESS", "bars")
    with pytest.raises(ValueError, match="TUTORIAL_LIB_PROGRESS='bars' is not one of auto, widget, text, off"):
        tlp.progress_mode()


def test_text_bars_in_a_stored_output(clean_env):
    clean_env.setenv("TUTORIAL_LIB_PROGRESS", "text")
    out = io.StringIO()
    assert list(tlp.tqdm(range(5), desc="kept", file=out)) == list(range(5))
    assert "kept: 100%" in out.getvalue() and "5/5" in out.getvalue()
    assert tlp.tqdm(range(2), file=out).mininterval == tlp.TEXT_MININTERVAL_S
    transient = io.StringIO()
    assert list(tlp.tqdm(range(5), desc="gone", leave=False, file=transient)) == list(range(5))
    assert transient.getvalue() == ""  # would leave a blank line in a stored notebook
    clean_env.setenv("TUTORIAL_LIB_PROGRESS", "off")
    assert list(tlp.tqdm(range(3), file=out)) == [0, 1, 2]
    assert out.getvalue().count("100%") == 1


def test_text_bars_on_a_terminal(clean_env):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    from tqdm.std import tqdm as plain

    bar = tlp.tqdm(range(3), desc="live", leave=False, file=out)
    # tqdm's own default (0.1 s, or TQDM_MININTERVAL as tqdm read it at import): a terminal redraws in place
    assert bar.mininterval == plain(range(0), file=io.StringIO()).mininterval != tlp.TEXT_MININTERVAL_S
    list(bar)
    assert "live:" in out.getvalue()


def _kernel_outputs(tmp_path, extra_env: dict[str, str]) -> list[dict]:
    """Run one cell that draws a bar in a real kernel, started as nbclient (papermill, nbconvert) starts it."""
    code = ("from tutorial_lib.progress import tqdm\n"
            "for _ in tqdm(range(3), desc='demo'):\n    pass")
    nb = new_notebook(cells=[new_code_cell(code)])
    env = {k: v for k, v in os.environ.items()
           if k not in ("TUTORIAL_LIB_PROGRESS", "JPY_SESSION_NAME", "TQDM_MININTERVAL")}
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env={**env, **extra_env})
    return nb.cells[0].outputs


def test_batch_kernel_stores_text_and_a_server_kernel_draws_a_widget(tmp_path):
    batch = _kernel_outputs(tmp_path, {})
    assert not [o for o in batch if WIDGET in o.get("data", {})]
    assert "demo: 100%" in "".join(o.get("text", "") for o in batch if o.get("name") == "stderr")
    # What jupyter_server adds to the environment of every kernel it starts for JupyterLab
    served = _kernel_outputs(tmp_path, {"JPY_SESSION_NAME": str(tmp_path / "x.ipynb")})
    assert [o for o in served if WIDGET in o.get("data", {})]


def test_runner_kernels_draw_text(tmp_path, monkeypatch):
    """`python -m tutorial_lib run` (make demo) executes notebooks with TUTORIAL_LIB_PROGRESS=text."""
    import tutorial_lib.tools.runner as tlrun

    monkeypatch.delenv("TUTORIAL_LIB_PROGRESS", raising=False)
    params = new_code_cell("RESULTS_PATH = ''")
    params.metadata["tags"] = ["parameters"]
    code = ("import os\nfrom tutorial_lib.progress import progress_mode\n"
            "print('mode:', os.environ.get('TUTORIAL_LIB_PROGRESS'), progress_mode())")
    nb = new_notebook(cells=[params, new_code_cell(code)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "00_env.ipynb")
    tlrun.run_notebooks([tmp_path / "00_env.ipynb"], output_dir=tmp_path / "out", results=tmp_path / "results.json",
                        echo=lambda *_: None)
    executed = nbformat.read(tmp_path / "out" / "00_env.ipynb", as_version=4)
    assert "mode: text text" in "".join(o.get("text", "") for o in executed.cells[-1].outputs)


def test_strip_widget_outputs_keeps_everything_else(tmp_path):
    import runpy

    strip = runpy.run_path(str(Path(__file__).parents[1] / "tools" / "strip_widget_outputs.py"))["strip_widgets"]
    cell = new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "x"}, "text/plain": "0%|"}),
                    nbformat.v4.new_output("stream", name="stdout", text="epoch 1\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
    nb = new_notebook(cells=[cell], metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {}}})
    nbformat.write(nb, tmp_path / "nb.ipynb")
    assert strip(tmp_path / "nb.ipynb") == 1
    stripped = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
    assert [o.output_type for o in stripped.cells[0].outputs] == ["stream", "display_data"]
    assert "widgets" not in stripped.metadata
    assert strip(tmp_path / "nb.ipynb") == 0


def test_every_library_loop_draws_through_the_progress_helper():
    """A direct tqdm.auto import would store a dead widget in executed notebooks again (two new modules did)."""
    import re
    from pathlib import Path

    package = Path(tlp.__file__).parent
    direct = [f"{p.name}:{n}" for p in sorted(package.rglob("*.py")) if p.name != "progress.py"
              for n, line in enumerate(p.read_text().splitlines(), 1)
              if re.search(r"^\s*(from tqdm|import tqdm)", line)]
    assert not direct, f"import tqdm through tutorial_lib.progress instead: {direct}"
