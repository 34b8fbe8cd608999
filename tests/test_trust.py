"""Trust with users' files: nothing overwritten, folders read as meant, every flag checked (issue 21).

Each test is a row of ``docs/reliability.md`` ("Users' files"). Tiny models and Pillow images in
``tmp_path``; nothing here downloads or trains a real network.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import tutorial_lib.checkpoint as tck
import tutorial_lib.tools.cli as tlcli
import tutorial_lib.data as tld
import tutorial_lib.report as tlr
import tutorial_lib.tools.runner as tlrun
import tutorial_lib.train as tlt
from conftest import write_image
from tutorial_lib._io import atomic_path, atomic_save, atomic_write_text, default_mode

CPU = torch.device("cpu")


def _toy(n: int = 48):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n + 16, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return (TensorDataset(torch.from_numpy(x[:n]), torch.from_numpy(y[:n])),
            TensorDataset(torch.from_numpy(x[n:]), torch.from_numpy(y[n:])))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _fit(ckpt, epochs=2, seed=0, **kwargs):
    train, val = _toy()
    return tlt.fit_classifier(_model(), train, val, tlt.TrainConfig(epochs=epochs, batch_size=8, seed=seed), CPU,
                   n_classes=2, checkpoint=ckpt, progress=False, **kwargs)


def _folder(root, classes=("coat", "shirt"), per_class=4):
    for name in classes:
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.jpg", size=(16, 12))
    return root


# =========================================================================== 1. never destroy a user's file


@pytest.mark.parametrize("kind", ["text", "state_dict", "pickled_model", "other_run"])
def test_checkpoint_path_holding_something_else_is_refused_and_kept(tmp_path, kind):
    ckpt = tmp_path / "x.pt"
    if kind == "text":
        ckpt.write_text("my notes\n")
    elif kind == "state_dict":
        torch.save(_model().state_dict(), ckpt)
    elif kind == "pickled_model":  # torch's own error for it says to retry with weights_only=False
        torch.save(_model(), ckpt)
    else:
        _fit(ckpt, seed=1)
    before = ckpt.read_bytes()
    with pytest.raises(tck.CheckpointError) as err:
        _fit(ckpt, existing="refuse")
    message = str(err.value)
    assert "x.pt" in message and "left untouched" in message and "--overwrite" in message
    assert "settings it was written with" in message and "another checkpoint path" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert ckpt.read_bytes() == before
    if kind == "other_run":
        assert "seed=1 (now 0)" in message
    history = _fit(ckpt, existing="overwrite")  # the user's explicit choice
    assert len(history) == 2 and tck.load_checkpoint(ckpt)["epoch"] == 1


def test_damaged_weights_message_does_not_relay_the_unsafe_advice(tmp_path):
    import tutorial_lib.models as tlm

    torch.save(_model(), tmp_path / "w.pth")
    with pytest.raises(Exception) as err:
        torch.load(tmp_path / "w.pth", weights_only=True)
    assert "weights_only" in str(err.value)  # what torch says ...
    assert tlm._why_damaged(err.value) == "UnpicklingError"  # ... and what the library passes on


def test_checkpoint_that_is_a_folder_is_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(tck.CheckpointError, match="is a folder; give a file name"):
        _fit(folder)
    # the command line says so before loading any data (the data path does not even exist)
    assert tlcli.main(["train", "--data", str(tmp_path / "nowhere"), "--checkpoint", str(folder)]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_more_epochs_continue_a_finished_run(tmp_path):
    ckpt = tmp_path / "x.pt"
    _fit(ckpt, epochs=3)
    with pytest.warns(UserWarning, match="continuing the run from epoch 3 to 4 epochs"):
        history = _fit(ckpt, epochs=4, existing="refuse")
    assert list(history["epoch"]) == [1, 2, 3, 4] and tck.load_checkpoint(ckpt)["epoch"] == 3


def test_library_default_keeps_another_runs_checkpoint_as_bak(tmp_path):
    ckpt = tmp_path / "x.pt"
    (tmp_path / "x.pt").write_text("not a checkpoint")
    with pytest.warns(UserWarning, match=r"Starting afresh; the old file is kept as .*x\.pt\.bak"):
        _fit(ckpt)
    assert (tmp_path / "x.pt.bak").read_text() == "not a checkpoint"


def test_cli_refuses_a_foreign_checkpoint_before_loading_data(tmp_path, capsys):
    ckpt = tmp_path / "weights.pth"
    torch.save(_model().state_dict(), ckpt)
    assert tlcli.main(["train", "--data", "retinamnist", "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "weights.pth is not a checkpoint written by" in err and "--overwrite" in err and "Traceback" not in err


# =========================================================================== 2. folders read as meant


@pytest.mark.parametrize("names", [("train", "val"), ("Train", "Test"), ("TRAIN", "Validation", "test"),
                                   ("train", "valid")], ids="_".join)
def test_split_folders_are_found_in_any_case(tmp_path, names):
    root = tmp_path / "photos"
    for name in names:
        _folder(root / name, per_class=5)
    data = tld.load_dataset(root)
    assert data.classes == ["coat", "shirt"]  # not a task "train vs val"
    assert all(set(s.labels) == {0, 1} for s in (data.train, data.val))
    assert sum(len(s) for s in data.splits.values()) == 10 * len(names)


def test_ambiguous_split_layout_shows_the_tree(tmp_path):
    root = tmp_path / "photos"
    _folder(root / "train")
    _folder(root / "Test")
    _folder(root / "extra")
    with pytest.raises(tld.DataError, match=r"(?s)mixes split folders.*extra.*The folders seen:.*train/.*coat/ \(4"):
        tld.load_dataset(root)
    (root / "extra").rename(root / "validation")
    _folder(root / "val")
    with pytest.raises(tld.DataError, match="both val/ and validation/ look like the val split"):
        tld.load_dataset(root)


def _csv(root, rows, sep=","):
    path = root / "m.csv"
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(path, index=False, sep=sep)
    return path


@pytest.mark.parametrize("spelling", ["./coat/coat_0.jpg", "coat//coat_0.jpg", "coat\\coat_0.jpg",
                                      " coat/coat_0.jpg ", "shirt/../coat/coat_0.jpg"],
                         ids=["dot_slash", "double_slash", "backslash", "spaces", "dot_dot"])
def test_csv_paths_are_normalised_before_duplicate_checks(tmp_path, spelling):
    root = _folder(tmp_path / "photos", per_class=6)
    rows = [(f"{c}/{c}_{i}.jpg", c) for c in ("coat", "shirt") for i in range(6)]
    with pytest.warns(UserWarning, match="dropped 1 duplicate row"):
        data = tld.load_dataset(_csv(root, rows + [(spelling, "coat")]))
    assert sum(len(s) for s in data.splits.values()) == 12
    with pytest.raises(tld.DataError, match=r"same file.*coat_0\.jpg"):
        tld.load_dataset(_csv(root, rows + [(spelling, "shirt")]))


@pytest.mark.parametrize("sep", [";", "\t", "|"], ids=["semicolon", "tab", "pipe"])
def test_csv_with_another_separator_loads(tmp_path, sep):
    root = _folder(tmp_path / "photos", per_class=5)
    rows = [(f"{c}/{c}_{i}.jpg", c) for c in ("coat", "shirt") for i in range(5)]
    assert tld.load_dataset(_csv(root, rows, sep=sep)).classes == ["coat", "shirt"]


def test_symlinks_that_dangle_loop_or_lead_back_are_listed_and_not_followed(tmp_path):
    root = _folder(tmp_path / "photos", per_class=5)
    os.symlink(root, root / "everything")  # a class folder that is the dataset itself
    os.symlink(root / "shirt", root / "coat" / "shirts too")  # a folder already in the dataset
    os.symlink(tmp_path / "gone.jpg", root / "coat" / "dangling.jpg")
    os.symlink(root / "coat" / "b.jpg", root / "coat" / "a.jpg")
    os.symlink(root / "coat" / "a.jpg", root / "coat" / "b.jpg")
    with pytest.warns(UserWarning) as caught:
        data = tld.load_dataset(root)
    text = "\n".join(str(w.message) for w in caught)
    assert "everything: symbolic link to a folder inside or above" in text and "shirts too: symbolic link" in text
    assert "dangling.jpg: broken symbolic link" in text and "a.jpg: symbolic link loop" in text
    assert data.classes == ["coat", "shirt"] and sum(len(s) for s in data.splits.values()) == 10


def test_labels_differing_only_by_case_or_number_format_are_reported(tmp_path):
    root = _folder(tmp_path / "photos", classes=("c", "d"), per_class=8)
    rows = [(f"c/c_{i}.jpg", "A" if i < 4 else "a") for i in range(8)]
    rows += [(f"d/d_{i}.jpg", "1" if i < 4 else "1.0") for i in range(8)]
    with pytest.warns(UserWarning, match=r"differ only by case, spaces or number format") as caught:
        tld.load_dataset(_csv(root, rows))
    text = " ".join(str(w.message) for w in caught)
    assert "['A', 'a']" in text and "['1', '1.0']" in text


# =========================================================================== 3. splits that can train


def test_a_class_too_small_for_train_and_validation_is_named(tmp_path):
    root = tmp_path / "photos"
    _folder(root / "train", per_class=5)
    write_image(root / "train" / "sock" / "only.jpg", size=(16, 12))
    _folder(root / "test", classes=("coat", "shirt", "sock"), per_class=2)
    with pytest.raises(tld.DataError, match=r"'sock' \(1 training image\).*at least 2 there"):
        tld.load_dataset(root)
    write_image(root / "train" / "sock" / "second.jpg", size=(16, 12))  # now it can: one each side
    data = tld.load_dataset(root)
    assert all(set(s.labels) == {0, 1, 2} for s in (data.train, data.val))


def test_tiny_seeded_split_keeps_every_class_on_both_sides(tmp_path):
    root = _folder(tmp_path / "photos", classes=("a", "b", "c"), per_class=3)
    for seed in range(5):
        data = tld.load_dataset(root, seed=seed)
        assert all(set(s.labels) == {0, 1, 2} for s in (data.train, data.val)), seed


# =========================================================================== 4. results that belong together


def test_a_new_dataset_starts_its_task_afresh(tmp_path):
    path = tmp_path / "results.json"
    tlr.record_metrics("dr", "finetune_top_ensemble", {"accuracy": 0.5}, dataset="retinamnist", split="test",
                       n_train=1080, n_test=400, backbone="googlenet", path=path)
    with pytest.warns(UserWarning, match="were on 'retinamnist'; recording on 'mine' starts dr afresh"):
        tlr.record_metrics("dr", "finetune_top", {"accuracy": 0.7}, dataset="mine", split="test", n_train=10,
                           n_test=5, path=path)
    results = tlr.load_results(path)
    assert list(results["dr"]["methods"]) == ["finetune_top"]
    assert results["dr"]["details"]["finetune_top"]["dataset"] == "mine"
    assert tlr.method_table(results, "dr")["dataset"].tolist() == ["mine"]
    assert "backbone None" not in tlr.results_markdown(results)


# =========================================================================== 5. exact resume


class _RandomAugment(Dataset):
    """Noise from Python's ``random`` and NumPy's global generator, drawn in the main process (num_workers=0)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + random.gauss(0, 0.5) + float(np.random.normal(0, 0.5)), y


def test_resume_restores_python_and_numpy_random_state(tmp_path):
    train, val = _toy()
    config = tlt.TrainConfig(epochs=4, batch_size=8, seed=3, num_workers=0)
    kwargs = dict(n_classes=2, progress=False)
    straight, ckpt_a = _model(), tmp_path / "straight.pt"
    h1 = tlt.fit_classifier(straight, _RandomAugment(train), val, config, CPU, checkpoint=ckpt_a, **kwargs)
    resumed, ckpt = _model(), tmp_path / "run.pt"
    tlt.fit_classifier(resumed, _RandomAugment(train), val, config, CPU, checkpoint=ckpt, stop_after_epoch=2, **kwargs)
    random.seed(99), np.random.seed(99)  # another process would start with other states
    resumed = _model()
    h2 = tlt.fit_classifier(resumed, _RandomAugment(train), val, config, CPU, checkpoint=ckpt, **kwargs)
    assert h1["train_loss"].tolist() == h2["train_loss"].tolist()
    # the last epoch's weights (fit returns the best epoch's, which may come before the interruption)
    last_a, last_b = tck.load_checkpoint(ckpt_a)["model"], tck.load_checkpoint(ckpt)["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_ctrl_c_at_the_command_line_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import tutorial_lib.tools.jobs as jobs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "train_job", interrupted)
    assert tlcli.main(["train", "--data", "x", "--checkpoint", str(tmp_path / "x.pt")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "Interrupted. Re-run the same command to resume from the last saved epoch."


# =========================================================================== 6. every number checked at the edge


CLI_CASES = [
    (["train", "--data", "x", "--epochs", "0"], "--epochs"), (["train", "--data", "x", "--epochs", "-2"], "--epochs"),
    (["train", "--data", "x", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "x", "--lr-head", "nan"], "--lr-head"),
    (["train", "--data", "x", "--lr-backbone", "inf"], "--lr-backbone"),
    (["train", "--data", "x", "--image-size", "0"], "--image-size"),
    (["train", "--data", "x", "--max-images", "0"], "--max-images"),
    (["prepare", "x", "--size", "-3"], "--size"), (["prepare", "x", "--size", "0"], "--size"),
    (["prepare", "x", "--chunk-size", "0"], "--chunk-size"),
    (["bench", "--budget-s", "nan"], "--budget-s"), (["bench", "--threshold", "1.5"], "--threshold")]


@pytest.mark.parametrize("argv, flag", CLI_CASES, ids=[f"{a[-2]}={a[-1]}" for a, _ in CLI_CASES])
def test_cli_numbers_are_checked_before_any_work(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        tlcli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err


def test_unknown_notebook_lists_the_valid_names(capsys):
    assert tlcli.main(["run", "99"]) == 1
    err = capsys.readouterr().err
    assert "No notebook matches ['99']" in err and "03_transfer_learning_dr" in err


@pytest.mark.parametrize("name, value", [("IMAGE_SIZE", -5), ("IMAGE_SIZE", 8), ("ENSEMBLE", 0), ("SEED", -1),
                                         ("NUM_WORKERS", -1)])
def test_notebook_numbers_are_range_checked(name, value):
    notebook = tlrun.NOTEBOOKS_DIR / "03_transfer_learning_dr.ipynb"
    with pytest.raises(ValueError, match=rf"03_transfer_learning_dr.ipynb: parameter {name} must be at least"):
        tlrun.check_parameters(notebook, {name: value})
    assert tlrun.check_parameters(notebook, {"IMAGE_SIZE": 0, "ENSEMBLE": 1}) == {"IMAGE_SIZE": 0, "ENSEMBLE": 1}


# =========================================================================== 7. normal permissions


def test_written_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        atomic_save({"a": torch.ones(1)}, tmp_path / "x.pt")
        with atomic_path(tmp_path / "a.npy", suffix=".npy") as tmp:
            np.save(tmp, np.zeros(2))
        assert default_mode() == 0o640
        from tutorial_lib.export import save_model
        from tutorial_lib.models import load_backbone

        backbone = load_backbone("efficientnet_lite0", num_classes=2)
        save_model(backbone, tmp_path / "model", classes=["a", "b"], task="clothing")
        for name in ("results.json", "x.pt", "a.npy", "model/model.safetensors", "model/model.json"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "results.json").read_text()) == {} and not list(tmp_path.glob(".*tmp"))


def test_prepare_redoes_its_arrays_when_a_photo_is_replaced(tmp_path):
    import tutorial_lib.tools.prepare as tlp

    root = _folder(tmp_path / "photos", per_class=6)
    data = tld.load_dataset(root)
    out = tlp.prepare(data, tmp_path / "prepared", size=16, progress=False)
    first = np.load(out / "train_images.npy").copy()
    from PIL import Image

    for path in data.train.images:  # the same names, other pictures
        Image.new("RGB", (16, 12), (10, 200, 10)).save(path)
        os.utime(path, ns=(1, 1))
    with pytest.warns(UserWarning, match="holds a preparation of other data or settings: starting afresh"):
        out = tlp.prepare(tld.load_dataset(root), out, size=16, progress=False)
    again = np.load(out / "train_images.npy")
    assert first[..., 1].max() < 100 and again[..., 1].max() > 150  # red photos before, green ones now


def test_sigint_at_the_command_line_prints_one_line_and_no_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nimport tutorial_lib.tools.cli as cli, tutorial_lib.tools.jobs as jobs\n"
                      "def slow(*a, **k):\n    print('training', flush=True)\n    time.sleep(60)\n"
                      "jobs.train_job = slow\n"
                      "sys.exit(cli.main(['train', '--data', 'x', '--checkpoint', sys.argv[1]]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "x.pt")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "training"
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130 and "Traceback" not in err
    assert err.strip() == "Interrupted. Re-run the same command to resume from the last saved epoch."


def test_image_size_auto_takes_numbers_and_refuses_other_words():
    notebook = tlrun.NOTEBOOKS_DIR / "03_transfer_learning_dr.ipynb"
    assert tlrun.check_parameters(notebook, {"IMAGE_SIZE": "auto"}) == {"IMAGE_SIZE": "auto"}
    assert tlrun.check_parameters(notebook, {"IMAGE_SIZE": 224}) == {"IMAGE_SIZE": 224}
    with pytest.raises(ValueError, match="IMAGE_SIZE expects a number or 'auto'"):
        tlrun.check_parameters(notebook, {"IMAGE_SIZE": "big"})
