"""tutorial_lib.report: the shared results file."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tutorial_lib.report as tlr


def test_record_metrics_writes_the_documented_layout(tmp_path):
    path = tmp_path / "results.json"
    tlr.record_metrics("dr", "svm", {"accuracy": np.float64(0.5), "qwk": 0.25}, dataset="retinamnist",
                       split="test", n_train=1080, n_test=400, backbone=None, path=path)
    tlr.record_metrics("dr", "finetune_top", {"accuracy": 0.6}, dataset="retinamnist", split="test",
                       n_train=1080, n_test=400, backbone="efficientnet_lite0", path=path)
    tlr.record_runtime("00_setup", 12.345, 812.34, path=path)
    saved = json.loads(path.read_text())
    assert saved["dr"]["methods"] == {"svm": {"accuracy": 0.5, "qwk": 0.25}, "finetune_top": {"accuracy": 0.6}}
    assert saved["dr"]["split"] == "test" and saved["dr"]["n_test"] == 400
    assert saved["runtime"]["00_setup"] == {"seconds": 12.35, "peak_rss_mb": 812.3}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary files left behind


def test_field_accuracy_may_be_a_dict(tmp_path):
    path = tmp_path / "r.json"
    tlr.record_metrics("tagging", "cnn_lstm", {"micro_f1": 0.9, "field_accuracy": {"gender": np.float32(0.75)}},
                       dataset="fashion", split="test", n_train=10, n_test=5, path=path)
    assert tlr.load_results(path)["tagging"]["methods"]["cnn_lstm"]["field_accuracy"] == {"gender": 0.75}


@pytest.mark.parametrize("task,method,metrics,match", [
    ("cats", "svm", {"accuracy": 1.0}, "Unknown task"),
    ("dr", "magic", {"accuracy": 1.0}, "Unknown method"),
    ("dr", "svm", {"acc": 1.0}, "Unknown metric"),
    ("dr", "svm", {"accuracy": float("nan")}, "non-finite"),
])
def test_bad_records_are_refused(tmp_path, task, method, metrics, match):
    with pytest.raises(ValueError, match=match):
        tlr.record_metrics(task, method, metrics, dataset="d", split="test", n_train=1, n_test=1,
                           path=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_corrupt_results_file_says_what_to_do(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{half")
    with pytest.raises(ValueError, match="delete it and re-run"):
        tlr.load_results(path)
