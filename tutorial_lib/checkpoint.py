"""Checkpoints of a training run: saved atomically each epoch, resumed only by the same run.

A run is identified by a *run key*: its settings, a fingerprint of its data's content and a
fingerprint of its model's architecture. A checkpoint is resumed only when the keys match
(the number of epochs aside: more epochs continue a finished run). Anything else found at the
path, another run's checkpoint, a ``state_dict``, a damaged or unrelated file, is handled the
same way for every network the tutorial trains (``existing``):

- ``"refuse"``: left untouched, :class:`CheckpointError` says what it is and what to do;
- ``"backup"``: renamed to ``<name>.bak`` with a warning (the library's default);
- ``"overwrite"``: replaced.

Loading uses ``weights_only=True``, so a checkpoint file can never run code.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import atomic_save, fingerprint
from .distributed import DistContext, barrier, gather_objects

EXISTING = ("refuse", "backup", "overwrite")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely (damaged, or holding more than tensors and plain data)."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: loading runs no code from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a text file raises KeyError, half a zip RuntimeError, ...)
        # torch's own message suggests weights_only=False, which would run any code in the file: never relay it
        found = re.search(r"GLOBAL ([\w.]+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if found:
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain data (a {found.group(1)}"
                                  "): it was not loaded, since loading such a file can run code from it. Delete it "
                                  "to start the run afresh.") from err
        detail = "" if "weights_only" in str(err) or "eights only" in str(err) else f": {str(err)[:200]}"
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged, or not saved by torch; "
                              f"{type(err).__name__}{detail}); it was not loaded. Delete it to start the run "
                              "afresh.") from err


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's architecture: its modules and the names and shapes of its weights."""
    return fingerprint({"modules": repr(model),
                        "weights": {name: list(t.shape) for name, t in model.state_dict().items()}})


def run_key(config: dict[str, Any], data: str, model: nn.Module) -> str:
    """The key that identifies a run: its settings, its data's fingerprint and its model's architecture."""
    return json.dumps({"config": config, "data": data, "model": model_fingerprint(model)}, sort_keys=True)


def read_own_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` for a checkpoint written by a training run, else ``(None, what the file is)``.

    A folder at ``path`` raises :class:`CheckpointError` (a checkpoint can never be written there)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"The checkpoint path {path} is a folder; give a file name, e.g. {path / 'run.pt'}.")
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        return None, str(err).split(" Delete it")[0].removesuffix("; it was not loaded.")
    if not (isinstance(state, dict) and "run_key" in state and "epoch" in state):
        return None, f"{path} is not a checkpoint written by this library's training (a state_dict or another file)"
    return state, None


def _differences(old_key: str, new_key: str) -> str:
    """The settings in which two run keys differ, e.g. ``lr_head=0.001 (now 0.01)``."""
    flat = lambda key: {**{k: v for k, v in key.items() if k != "config"}, **key.get("config", {})}  # noqa: E731
    old, new = flat(json.loads(old_key)), flat(json.loads(new_key))
    return ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k)) or "other settings"


def keep_aside(path: Path, problem: str, stacklevel: int = 2) -> Path:
    """Rename ``path`` to ``<name>.bak`` (replacing an older ``.bak``) with a warning that says ``problem``."""
    backup = Path(path).with_name(Path(path).name + ".bak")
    os.replace(path, backup)
    warnings.warn(f"{problem}. Starting afresh; the old file is kept as {backup}.", stacklevel=stacklevel)
    return backup


def resume_state(path: Path | None, key: str, epochs: int, existing: str = "backup",
                 kind: str = "run") -> dict[str, Any] | None:
    """The state to resume from the checkpoint at ``path``, or ``None`` to start afresh.

    This run's checkpoint (same ``key`` but for the number of epochs) is resumed, also when
    ``epochs`` grew. Anything else at ``path`` is handled by ``existing`` (see the module's doc).
    ``kind`` names the run in messages ("run", "tagging run").
    """
    if existing not in EXISTING:
        raise ValueError(f"existing={existing!r}: use one of {EXISTING}.")
    if path is None or not Path(path).exists() and not Path(path).is_symlink():
        return None
    path = Path(path)
    state, problem = read_own_checkpoint(path)
    if state is not None:
        old, new = json.loads(state["run_key"]), json.loads(key)
        old_epochs, _ = old["config"].pop("epochs", None), new["config"].pop("epochs", None)
        done = state["epoch"] + 1
        if old == new and done <= epochs:
            if done < epochs and old_epochs != epochs:
                warnings.warn(f"{path.name}: continuing the run from epoch {done} to {epochs} epochs.", stacklevel=5)
            return state
        problem = (f"{path} already holds {done} trained epochs, more than the {epochs} asked for" if old == new
                   else f"{path} is the checkpoint of another {kind}: {_differences(state['run_key'], key)}")
    if existing == "refuse":
        raise CheckpointError(f"{problem}; it was left untouched. To resume it, re-run with the settings it was "
                              "written with; to keep it, pass another checkpoint path; to replace it, pass "
                              "--overwrite (command line) or existing='overwrite' (Python).")
    if existing == "backup":
        keep_aside(path, problem, stacklevel=6)
    return None


# --------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """The random state that training consumes: torch (dropout, sampling), Python's ``random`` and NumPy's
    global generator (augmentations, in the main process when ``num_workers=0``). Kept as plain data
    and tensors, so ``weights_only`` loading accepts it."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
             "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(
                 np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                 "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    s = state["numpy"]
    np.random.set_state({"bit_generator": s["bit_generator"], "has_gauss": s["has_gauss"], "gauss": s["gauss"],
                         "state": {"key": s["key"].numpy().astype(np.uint32), "pos": s["pos"]}})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- one run's checkpoint file


class RunCheckpoint:
    """The checkpoint file of one run: :meth:`resume` at the start, :meth:`save` after every epoch.

    Under DDP (``ctx`` of :mod:`tutorial_lib.distributed`) every rank's random state is kept and
    only rank 0 writes; the other ranks wait until the file is complete.
    """

    def __init__(self, path: Path, key: str, *, existing: str = "backup", kind: str = "run",
                 ctx: DistContext | None = None) -> None:
        self.path, self.key, self.existing, self.kind = Path(path), key, existing, kind
        self.ctx = ctx or DistContext()  # rank 0 of 1 unless started by torchrun

    def resume(self, epochs: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: torch.amp.GradScaler) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
        """Load this run's state if the file holds it: ``(history, best, first epoch to train)``."""
        state = resume_state(self.path, self.key, epochs, self.existing, self.kind)
        if state is None:
            return [], {"score": -float("inf"), "state": None}, 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        rng = self._my_rng(state)
        if rng is not None:
            set_rng_state(rng)
        return state["history"], state["best"], state["epoch"] + 1

    def save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             scaler: torch.amp.GradScaler, history: list[dict[str, Any]], best: dict[str, Any]) -> None:
        """Write the state after ``epoch`` (0-based) atomically."""
        ranks = gather_objects(rng_state(), self.ctx)  # every rank's random state, for an exact resume
        if self.ctx.is_main:
            extra: dict[str, Any] = {"rng_ranks": ranks} if len(ranks) > 1 else {}
            if scaler.is_enabled():
                extra["scaler"] = scaler.state_dict()
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "history": history, "best": best, "epoch": epoch,
                         "rng": ranks[0], "run_key": self.key, **extra}, self.path)
        barrier(self.ctx)

    def _my_rng(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's random state (``None`` on another rank of a run saved with other ranks: keep its seeding)."""
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.ctx.world_size:
            return ranks[self.ctx.rank]
        return state["rng"] if self.ctx.is_main else None
