"""tutorial_lib.tools.bench*: FLOP counts against hand-computed ones, the time-to-accuracy summary, and a quick run."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tutorial_lib.tools import bench_accuracy, bench_report, bench_throughput
from tutorial_lib.tools.cli import main


def test_linear_flops_forward_and_backward():
    batch, d_in, d_out = 8, 32, 16
    layer = nn.Linear(d_in, d_out)
    assert bench_throughput.model_flops(layer, (batch, d_in)) == 2 * batch * d_in * d_out
    # backward: the weight gradient (one more product); none for the input, which needs no gradient
    assert bench_throughput.model_flops(layer, (batch, d_in), backward=True) == 4 * batch * d_in * d_out
    assert layer.weight.grad is None  # the count leaves no gradients behind
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    frozen = nn.Sequential(layer, nn.Linear(d_out, 4))  # a frozen first layer: no gradient is computed for it
    assert bench_throughput.model_flops(frozen, (batch, d_in), backward=True) == (
        2 * batch * d_in * d_out + 2 * batch * d_out * 4  # forward
        + 2 * batch * d_out * 4)  # backward: the second layer's weight gradient only (nothing below needs one)


def test_grouped_conv_flops():
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)  # depthwise: 9 multiply-adds per output
    assert bench_throughput.model_flops(conv, (2, 16, 10, 10)) == 2 * 2 * 16 * 10 * 10 * 9
    # backward of a depthwise conv: its weight gradient costs what the forward costs (torch's own formula
    # ignores the groups there and would count 16x more); the input needs no gradient
    assert bench_throughput.model_flops(conv, (2, 16, 10, 10), backward=True) == 2 * (2 * 2 * 16 * 10 * 10 * 9)
    dense = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    assert bench_throughput.model_flops(nn.Sequential(dense, nn.Conv2d(8, 8, 1, bias=False)), (2, 16, 10, 10), backward=True) == (
        2 * (2 * 2 * 16 * 8 * 10 * 10 * 9)  # first layer: forward + weight gradient (its input needs none)
        + 3 * (2 * 2 * 8 * 8 * 10 * 10))  # second layer: forward + weight gradient + gradient for the first


def test_matmul_peak_is_positive_and_repeatable():
    first = bench_throughput.matmul_peak_flops(torch.float32, 256, repeats=3)
    second = bench_throughput.matmul_peak_flops(torch.float32, 256, repeats=3)
    assert first > 1e8 and second > 1e8  # any CPU of the last 20 years does 0.1 GFLOP/s
    assert 0.2 < first / second < 5  # best-of-N is stable even on a shared machine


def _run(seconds, threshold=0.85, budget=None, accuracies=()):
    run = bench_accuracy.AccuracyRun("x", threshold, budget_s=budget)
    for t, acc in zip(seconds, accuracies):
        run.record(t, 1, acc)
    run.stopped_at_s = seconds[-1] if seconds else 0.0
    return run


def test_time_to_accuracy_summary():
    ours = _run([10, 20, 30], accuracies=[0.5, 0.86, 0.9])
    assert ours.seconds == 20
    reached = bench_accuracy.summarise_time_to_accuracy(ours, _run([100, 400], accuracies=[0.7, 0.85]))
    assert reached["time_to_accuracy_ratio"] == pytest.approx(400 / 20)
    assert reached["recipe_reached"] and not reached["ratio_is_lower_bound"]
    budget = bench_accuracy.summarise_time_to_accuracy(ours, _run([100, 1210], budget=1200, accuracies=[0.7, 0.8]))
    assert budget["recipe_seconds"] == 1210 and budget["recipe_seconds_is_lower_bound"]
    assert budget["time_to_accuracy_ratio"] == pytest.approx(1210 / 20) and budget["ratio_is_lower_bound"]
    never = bench_accuracy.summarise_time_to_accuracy(_run([10], accuracies=[0.5]), _run([5], accuracies=[0.9]))
    assert never["time_to_accuracy_ratio"] is None and not never["ours_reached"]


@pytest.mark.slow
def test_quick_bench_writes_json_and_markdown(tmp_path):
    results = tmp_path / "results.json"  # a finished demo's runtime, read back with --skip-demo
    results.write_text(json.dumps({"runtime": {"00_setup": {"seconds": 12.0, "peak_rss_mb": 900.0},
                                               "01_pre": {"seconds": 30.5, "peak_rss_mb": 2500.0}}}))
    out = tmp_path / "bench.json"
    # threshold 0: both runs reach it at their first validation, so every figure exists
    assert main(["bench", "--quick", "--skip-demo", "--threshold", "0", "--results", str(results),
                 "--output", str(out), "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    for key in ("time_to_accuracy_ratio", "feature_extraction_fraction_of_limit", "finetune_step_fraction_of_limit"):
        assert isinstance(data[key], float), key
    for key in ("feature_extraction_fraction_of_limit", "finetune_step_fraction_of_limit"):
        assert 0 < data[key] <= 1.5, (key, data[key])
    tta = data["time_to_accuracy"]
    assert tta["ours_reached"] and tta["recipe_reached"]
    assert data["time_to_accuracy_ratio"] == pytest.approx(tta["recipe_seconds"] / tta["ours_seconds"])
    fe = data["throughput"]["feature_extraction"]
    assert fe["fraction_of_limit"] == pytest.approx(fe["images_per_s"] * fe["flops_per_image"] / data["matmul_peak_flops"])
    assert fe["flops_per_image"] > 1e6 and data["throughput"]["finetune_step"]["flops_per_image"] > 1e5
    pred = data["throughput"]["predict"]  # tl.predict on the quick profile's test photos, load included
    assert pred["images"] == 20 and pred["images_per_s"] == pytest.approx(pred["images"] / pred["seconds"])
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["usable_cores"] >= 1
    assert data["demo"]["total_seconds"] == pytest.approx(42.5) and data["demo"]["max_peak_rss_mb"] == 2500
    md = out.with_suffix(".md").read_text()
    assert "| Figure | Target | Measured | Met |" in md
    assert "| Largest notebook peak RSS | ≤ 2048 MB | 2,500 MB | no |" in md
    assert f"| `predict` on 20 photo files, model load included | (none) | {pred['images_per_s']:.1f} img/s" in md


def _bench_dict(ratio_lower_bound: bool, ratio: float, demo_total: float | None) -> dict:
    ours, recipe = _run([60.0], accuracies=[0.9]), _run([600.0], budget=600, accuracies=[0.8])
    tta = bench_accuracy.summarise_time_to_accuracy(ours, recipe if ratio_lower_bound else _run([ratio * 60], accuracies=[0.9]))
    rate = {"fraction_of_limit": 0.6, "images_per_s": 60.0, "limit_images_per_s": 100.0}
    return {"date": "today", "machine": {"cpu": "x", "usable_cores": 2, "torch_threads": 2, "torch": "t",
                                         "device": "cpu"},
            "matmul_peak_flops": 1e11, "time_to_accuracy_ratio": tta["time_to_accuracy_ratio"],
            "time_to_accuracy": tta, "throughput": {"feature_extraction": rate, "finetune_step": rate},
            "demo": {"source": "s", "notebooks": {}, "total_seconds": demo_total, "max_peak_rss_mb": None}}


def test_markdown_says_what_is_met_and_what_a_lower_bound_cannot_show():
    md = bench_report.markdown_table(_bench_dict(False, 16.0, 500.0))
    assert "| ≥ 15× | 16.0× (960 s / 60 s) | yes |" in md
    assert "| ≥ 50% | 60% (60.0 of 100.0 img/s) | yes |" in md
    assert "| ≤ 600 s | 500 s | yes |" in md and "| ≤ 2048 MB | — | — |" in md
    md = bench_report.markdown_table(_bench_dict(True, 0.0, None))  # recipe out of budget at 600 s: ratio >= 10
    assert "| ≥ 15× | ≥ 10.0× (≥ 600 s / 60 s) | not shown (lower bound below target) |" in md
    md = bench_report.markdown_table(_bench_dict(False, 12.0, 500.0))
    assert "| ≥ 15× | 12.0× (720 s / 60 s) | no |" in md
    md = bench_report.markdown_table(_bench_dict(False, 4.0, 700.0))
    assert "| 4.0× (240 s / 60 s) | no |" in md and "| ≤ 600 s | 700 s | no |" in md
