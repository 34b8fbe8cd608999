"""tutorial_lib.distributed: DDP under torchrun (gloo, 2 CPU processes) and gradient accumulation match one process.

Tolerance: final weights within 1e-5 (observed about 1e-7: float rounding of sums taken in another
order), train loss within 1e-5, validation accuracy identical, on a tiny CNN without BatchNorm or
dropout (those are per process by design, so they only match statistically).
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import tutorial_lib.checkpoint as tck
import tutorial_lib.distributed as tldist
import tutorial_lib.train as tlt
from tutorial_lib.env import make_generator

WORKER = Path(__file__).with_name("_ddp_fit.py")
WEIGHT_TOL = 1e-5


def _worker_module():
    spec = importlib.util.spec_from_file_location("_ddp_fit", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), "--out", str(out), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single_process_run():
    worker = _worker_module()
    net, history = worker.run(worker.config(1), torch.device("cpu"))
    return net.state_dict(), history


def test_epoch_order_is_the_order_fit_sees():
    data = list(range(37))
    for num_samples in (None, 20, 50):
        generator = make_generator(123)
        loader = DataLoader(data, batch_size=8, generator=generator,
                            sampler=RandomSampler(data, num_samples=num_samples, generator=generator))
        seen = [int(i) for batch in loader for i in batch]
        assert tldist.epoch_order(len(data), num_samples, make_generator(123)) == seen


def test_each_rank_takes_its_share_of_the_same_global_batches():
    order = list(range(100, 125))  # 25 items, batch 8: 3 full steps and one of 1
    labels = np.arange(200) % 3
    weight = torch.tensor([1.0, 2.0, 0.5])
    plans = [tldist.plan_epoch(order, 8, 2, tldist.DistContext(r, 2), labels=labels, weight=weight) for r in (0, 1)]
    assert all(p.n_steps == 4 for p in plans)
    for step in range(4):
        shares = [m for p in plans for m in p.micro_batches[step * 2:(step + 1) * 2]]
        real = [i for m in shares for i in m.indices[:m.real]]
        assert sorted(real) == order[step * 8:(step + 1) * 8]
        total = float(weight[labels[order[step * 8:(step + 1) * 8]]].sum())
        assert all(m.loss_scale == pytest.approx(2 / total) for m in shares)
    last = [m for p in plans for m in p.micro_batches[-2:]]
    assert [m.real for m in last] == [1, 0, 0, 0]  # empty shares are padded and weigh nothing
    assert all(len(m.indices) == 1 for m in last)


def test_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="use a multiple of 8"):
        tldist.micro_batch_size(36, 2, 4)
    assert tldist.micro_batch_size(32, 2, 4) == 4


def test_accumulation_matches_one_large_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    train = TensorDataset(torch.from_numpy(x[:90]), torch.from_numpy(y[:90]))  # last batch of 10: uneven
    val = TensorDataset(torch.from_numpy(x[90:]), torch.from_numpy(y[90:]))

    def run(accumulate):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        cfg = tlt.TrainConfig(epochs=4, batch_size=16, lr_head=1e-2, lr_backbone=1e-2, seed=0,
                              accumulate_steps=accumulate)  # class-balanced, label-smoothed loss (the defaults)
        history = tlt.fit_classifier(net, train, val, cfg, torch.device("cpu"), head_prefixes=["2"], n_classes=3,
                          train_labels=y[:90], progress=False)
        return net.state_dict(), history

    base_weights, base_history = run(1)
    for accumulate in (2, 4):
        weights, history = run(accumulate)
        assert _max_weight_difference(base_weights, weights) < 1e-6
        assert np.allclose(history["train_loss"], base_history["train_loss"], atol=1e-6)
        assert list(history["val_accuracy"]) == list(base_history["val_accuracy"])


def test_two_gloo_processes_match_one_process(tmp_path, single_process_run):
    """2 ranks x 2 accumulation steps x 8 images = the single process's batch of 32."""
    _torchrun(tmp_path, "--accumulate", "2")
    weights, history = single_process_run
    ddp_weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    ddp_history = pd.read_json(tmp_path / "history.json")
    difference = _max_weight_difference(weights, ddp_weights)
    print(f"max |w_ddp - w_single| = {difference:.2e}")
    assert difference < WEIGHT_TOL
    assert np.allclose(ddp_history["train_loss"], history["train_loss"], atol=WEIGHT_TOL)
    correct = lambda h: list((h["val_accuracy"] * 60).round().astype(int))  # noqa: E731  (60 validation images)
    assert correct(ddp_history) == correct(history)  # identical accuracy: the same images right
    assert history["val_accuracy"].max() > history["val_accuracy"].iloc[0]  # it did learn something


def test_interrupted_ddp_run_resumes_to_the_single_process_result(tmp_path, single_process_run):
    _torchrun(tmp_path, "--interrupt")
    checkpoint = tck.load_checkpoint(tmp_path / "run.pt")
    assert len(checkpoint["rng_ranks"]) == 2 and checkpoint["epoch"] == 2
    ddp_weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert _max_weight_difference(single_process_run[0], ddp_weights) < WEIGHT_TOL
    assert list(pd.read_json(tmp_path / "history.json")["epoch"]) == [1, 2, 3]


def test_cli_train_under_torchrun_with_a_real_backbone(tmp_path):
    """`python -m tutorial_lib train` under torchrun: the default GoogLeNet end to end on a few embedded clothing photos."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    results = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tutorial_lib", "train", "--data", "clothing",
           "--backbone", "googlenet", "--epochs", "1", "--batch-size", "8", "--accumulate", "2",
           "--image-size", "32", "--max-images", "16", "--num-workers", "0", "--device", "cpu", "--quiet",
           "--checkpoint", str(tmp_path / "run.pt"), "--results", str(results)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = __import__("json").loads(results.read_text())
    assert summary["world_size"] == 2 and summary["config"]["accumulate_steps"] == 2
    assert summary["sizes"]["train"] == 16 and len(summary["history"]) == 1
    assert len(tck.load_checkpoint(tmp_path / "run.pt")["rng_ranks"]) == 2
