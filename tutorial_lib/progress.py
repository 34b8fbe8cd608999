"""Progress bars: a live widget in JupyterLab, plain text when a notebook is executed in batch.

Every loop of the library draws its bar with :func:`tqdm` from here (a drop-in for
``tqdm.auto.tqdm``). ``tqdm.auto`` alone draws ipywidgets in *any* kernel, so notebooks
executed by papermill, nbconvert or nbval stored dead widgets that JupyterLab later showed as
frozen "0%" bars. The environment variable ``TUTORIAL_LIB_PROGRESS`` chooses:

- ``auto`` (default): a widget in a kernel that a Jupyter server started (JupyterLab,
  Notebook, Binder: the server sets ``JPY_SESSION_NAME`` in its kernels' environment); plain
  text everywhere else (a terminal, papermill, nbconvert, nbval).
- ``widget``, ``text`` or ``off``: always that (``make notebooks``, ``make test`` and
  ``python -m tutorial_lib run`` set ``text``).

Plain text goes to stderr. Where stderr is not a terminal (an executed notebook, a log file)
it is redrawn at most every :data:`TEXT_MININTERVAL_S` seconds (``TQDM_MININTERVAL``
overrides that) and transient bars (``leave=False``) are not drawn: stored, they would leave
only a blank line behind.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import std

MODE_VARIABLE = "TUTORIAL_LIB_PROGRESS"
MODES = ("auto", "widget", "text", "off")
TEXT_MININTERVAL_S = 5.0


def _in_server_kernel() -> bool:
    """True inside an IPython kernel started by a Jupyter server (where a frontend shows widgets)."""
    return "ipykernel" in sys.modules and bool(os.environ.get("JPY_SESSION_NAME"))


def progress_mode() -> str:
    """``"widget"``, ``"text"`` or ``"off"``, from ``TUTORIAL_LIB_PROGRESS`` and where the code runs."""
    mode = os.environ.get(MODE_VARIABLE, "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={os.environ[MODE_VARIABLE]!r} is not one of {', '.join(MODES)}; "
                         f"unset it or pick one.")
    if mode == "auto":
        return "widget" if _in_server_kernel() else "text"
    return mode


def tqdm(*args: Any, **kwargs: Any) -> std.tqdm:
    """A progress bar (same arguments as ``tqdm.tqdm``) drawn as :func:`progress_mode` says."""
    mode = progress_mode()
    if mode == "widget":
        from tqdm.auto import tqdm as live

        return live(*args, **kwargs)
    kwargs.setdefault("file", sys.stderr)
    stored = not getattr(kwargs["file"], "isatty", lambda: False)()
    if mode == "off" or (stored and kwargs.get("leave") is False):
        kwargs["disable"] = True
    elif stored and "TQDM_MININTERVAL" not in os.environ:
        kwargs.setdefault("mininterval", TEXT_MININTERVAL_S)
    return std.tqdm(*args, **kwargs)

