"""Detections: threshold, top-n, species list, merging calls across windows, and the formats."""

import json

import numpy as np
import pandas as pd
import pytest

from tfbird import detections

LABELS = ["sp00", "sp01", "sp02"]


def test_select_keeps_scores_at_or_above_min_conf_highest_first():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.7]])
    rows = detections.select_detections(scores, np.array([0.0, 5.0]), np.array([5.0, 8.0]),
                                        LABELS, min_conf=0.5, file="a.wav")
    assert list(rows.columns) == detections.COLUMNS
    assert rows[["start_s", "end_s", "label"]].values.tolist() == [
        [0.0, 5.0, "sp00"], [0.0, 5.0, "sp01"], [5.0, 8.0, "sp02"]]
    np.testing.assert_allclose(rows["confidence"], [0.9, 0.5, 0.7], rtol=1e-6)
    assert set(rows["file"]) == {"a.wav"}


def test_top_n_and_species_list():
    scores = np.array([[0.9, 0.8, 0.7]])
    starts, ends = np.array([0.0]), np.array([5.0])
    top1 = detections.select_detections(scores, starts, ends, LABELS, 0.0, top_n=1)
    assert top1["label"].tolist() == ["sp00"]
    only = detections.select_detections(scores, starts, ends, LABELS, 0.0, top_n=1,
                                        keep_labels=["sp01", "sp02"])
    assert only["label"].tolist() == ["sp01"]
    with pytest.raises(ValueError, match="unknown to the model"):
        detections.select_detections(scores, starts, ends, LABELS, 0.0, keep_labels=["owl"])
    with pytest.raises(ValueError, match=r"Received: scores.shape=\(1, 2\)"):
        detections.select_detections(scores[:, :2], starts, ends, LABELS, 0.0)


def test_nothing_above_threshold_gives_an_empty_table():
    rows = detections.select_detections(np.zeros([4, 3]), np.arange(4.0), np.arange(4.0) + 5,
                                        LABELS, min_conf=0.5)
    assert rows.empty and list(rows.columns) == detections.COLUMNS


def test_merge_joins_overlapping_and_touching_windows_per_label():
    rows = pd.DataFrame({
        "file": "a.wav",
        "start_s": [0.0, 2.5, 5.0, 15.0, 0.0, 5.0, 10.0],
        "end_s": [5.0, 7.5, 10.0, 20.0, 5.0, 10.0, 15.0],
        "label": ["sp00"] * 4 + ["sp01"] * 3,
        "confidence": [0.6, 0.9, 0.7, 0.8, 0.5, 0.6, 0.55],
    })
    merged = detections.merge_consecutive(rows)
    assert merged[["start_s", "end_s", "label"]].values.tolist() == [
        [0.0, 10.0, "sp00"], [0.0, 15.0, "sp01"], [15.0, 20.0, "sp00"]]
    np.testing.assert_allclose(merged["confidence"], [0.9, 0.6, 0.8])


def test_raven_audacity_and_json_formats(tmp_path):
    rows = detections.select_detections(np.array([[0.9, 0.1, 0.6]]), np.array([5.0]),
                                        np.array([10.0]), LABELS, 0.5, file="a.wav")
    paths = detections.output_paths(tmp_path / "site" / "a.wav", tuple(detections.OUTPUT_SUFFIXES))
    detections.write_outputs(rows, paths, "a.wav", 12.0, (20.0, 16000.0), "model.tflite")
    raven = pd.read_csv(paths["raven"], sep="\t")
    assert list(raven.columns) == detections.RAVEN_COLUMNS
    assert raven["Selection"].tolist() == [1, 2]
    assert raven["Species Code"].tolist() == ["sp00", "sp02"]
    assert raven["Low Freq (Hz)"].tolist() == [20.0, 20.0]
    assert raven["High Freq (Hz)"].tolist() == [16000.0, 16000.0]
    assert paths["audacity"].read_text() == "5.000\t10.000\tsp00 0.900\n5.000\t10.000\tsp02 0.600\n"
    document = json.loads(paths["json"].read_text())
    assert document["file"] == "a.wav" and document["duration_s"] == 12.0
    assert [d["label"] for d in document["detections"]] == ["sp00", "sp02"]
    assert pd.read_csv(paths["csv"]).columns.tolist() == detections.COLUMNS
    assert not list(tmp_path.rglob("*.tmp"))
