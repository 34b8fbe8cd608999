"""tutorial_lib.report: the shared results file."""
from __future__ import annotations

import json
import re

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


# --------------------------------------------------------------------------- floors and the results report (06)

REFERENCE = {"clothing": {"dataset": "clothing", "split": "test", "n_train": 10, "n_test": 5, "backbone": "b",
                          "methods": {"svm": {"accuracy": 0.74, "macro_f1": 0.70}},
                          "details": {"svm": {"profile": "default", "seed": 0}}}}


def _run(accuracy, profile="default", seed=0, dataset="clothing"):
    return {"clothing": {"dataset": dataset, "split": "test", "n_train": 10, "n_test": 5, "backbone": "b",
                         "methods": {"svm": {"accuracy": accuracy, "macro_f1": 0.70}},
                         "details": {"svm": {"profile": profile, "seed": seed}}}}


def test_a_result_below_its_floor_fails_and_is_named():
    checked = tlr.check_floors(_run(0.70), REFERENCE)  # 0.74 - 0.03 = 0.71 > 0.70
    row = checked.set_index("metric").loc["accuracy"]
    assert row["status"] == "BELOW FLOOR" and row["floor"] == pytest.approx(0.71)
    with pytest.raises(AssertionError, match=r"clothing/svm accuracy: 0.7000 < floor 0.7100"):
        tlr.assert_floors(checked)


def test_a_result_within_tolerance_passes():
    checked = tlr.check_floors(_run(0.72), REFERENCE)
    assert set(checked["status"]) == {"ok"}
    tlr.assert_floors(checked)


@pytest.mark.parametrize("kwargs,reason", [({"profile": "quick"}, "profile"), ({"seed": 1}, "seed"),
                                           ({"dataset": "mine"}, "data set")])
def test_only_like_is_compared_with_like(kwargs, reason):
    checked = tlr.check_floors(_run(0.10, **kwargs), REFERENCE)
    assert all(s.startswith("not comparable") and reason in s for s in checked["status"])
    tlr.assert_floors(checked)  # a quick run's low numbers are not a regression


def test_a_missing_result_is_reported_not_passed():
    checked = tlr.check_floors({}, REFERENCE)
    assert set(checked["status"]) == {"missing: not recorded"}


def test_the_shipped_reference_run_covers_every_task_and_passes_its_own_floors():
    reference = tlr.reference_results()
    assert set(tlr.TASKS) <= set(reference)
    checked = tlr.check_floors(reference, reference)
    assert len(checked) >= 15 and set(checked["status"]) == {"ok"}


def test_results_markdown_has_a_table_per_task_and_the_talks_figures():
    text = tlr.results_markdown(_run(0.72), tlr.check_floors(_run(0.72), REFERENCE))
    assert "| svm | 0.720 | 0.700 | default |" in re.sub(" +", " ", text)  # columns are padded to line up
    assert "fine-tuned GoogLeNet 0.93" in text
    assert "## dr" in text and "Nothing recorded yet." in text
    assert "Regression check" in text


def test_markdown_tables_leave_missing_values_blank_and_line_numbers_up():
    import pandas as pd

    frame = pd.DataFrame({"method": ["svm", "cnn"], "accuracy": [0.5, None], "status": ["ok", None]})
    lines = tlr._markdown_table(frame).splitlines()
    assert [line.replace(" ", "") for line in lines[::2]] == ["|method|accuracy|status|", "|svm|0.500|ok|"]
    assert lines[3].replace(" ", "") == "|cnn|||"
    assert re.fullmatch(r"\|:-+\|-+:\|:-+\|", lines[1])  # text left, numbers right
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header


def test_output_folder_is_given_or_beside_the_results(tmp_path):
    from tutorial_lib.report import output_folder

    assert output_folder("", "figures", tmp_path / "r.json") == tmp_path / "figures"
    assert output_folder(tmp_path / "mine", "cache", tmp_path / "r.json") == tmp_path / "mine"
