"""Detections: threshold, top-n, species list, merging calls across windows, and the formats."""

import json

import numpy as np
import pandas as pd
import pytest

from tfbird import catalog, detections

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
    assert raven["Begin Path"].tolist() == ["a.wav", "a.wav"]
    assert raven["File Offset (s)"].tolist() == [5.0, 5.0]
    assert raven["Low Freq (Hz)"].tolist() == [20.0, 20.0]
    assert raven["High Freq (Hz)"].tolist() == [16000.0, 16000.0]
    assert paths["audacity"].read_text() == "5.000\t10.000\tsp00 0.900\n5.000\t10.000\tsp02 0.600\n"
    document = json.loads(paths["json"].read_text())
    assert document["file"] == "a.wav" and document["duration_s"] == 12.0
    assert [d["label"] for d in document["detections"]] == ["sp00", "sp02"]
    assert pd.read_csv(paths["csv"]).columns.tolist() == detections.COLUMNS
    assert not list(tmp_path.rglob("*.tmp"))


# BirdNET-Analyzer's headers, as its writers spell them (the parsers of its users' tools).
BIRDNET_RAVEN_HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\t"
                        "High Freq (Hz)\tCommon Name\tSpecies Code\tConfidence\tBegin Path\t"
                        "File Offset (s)")
BIRDNET_CSV_HEADER = "Start (s),End (s),Scientific name,Common name,Confidence,File"
KALEIDOSCOPE_HEADER = ("INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,"
                       "confidence,lat,lon,week,overlap,sensitivity")
NAMES = {"sp00": ("Turdus merula", "Eurasian Blackbird")}  # sp02: "Sci name_Common" label


def birdnet_rows(tmp_path, formats):
    rows = detections.select_detections(
        np.array([[0.9, 0.1, 0.6]]), np.array([5.0]), np.array([8.0]),
        ["sp00", "sp01", "Erithacus rubecula_European Robin"], 0.5,
        file=str(tmp_path / "site1" / "dawn.wav"))
    paths = detections.output_paths(tmp_path / "out" / "dawn.wav", formats)
    detections.write_outputs(rows, paths, rows["file"][0], 12.0, (150.0, 15000.0), "m",
                             NAMES, overlap_s=1.5)
    return paths


def test_birdnet_raven_csv_and_kaleidoscope_tables_have_birdnet_columns(tmp_path):
    paths = birdnet_rows(tmp_path, ("raven", "birdnet_csv", "kaleidoscope"))
    recording = str(tmp_path / "site1" / "dawn.wav")
    assert paths["raven"].read_text().splitlines()[0] == BIRDNET_RAVEN_HEADER
    raven = pd.read_csv(paths["raven"], sep="\t")
    assert raven.to_dict("list") == {
        "Selection": [1, 2], "View": ["Spectrogram 1"] * 2, "Channel": [1, 1],
        "Begin Time (s)": [5.0, 5.0], "End Time (s)": [8.0, 8.0],
        "Low Freq (Hz)": [150.0, 150.0], "High Freq (Hz)": [15000.0, 15000.0],
        "Common Name": ["Eurasian Blackbird", "European Robin"],
        "Species Code": ["sp00", "Erithacus rubecula_European Robin"],
        "Confidence": [0.9, 0.6], "Begin Path": [recording] * 2, "File Offset (s)": [5.0, 5.0]}
    assert paths["birdnet_csv"].read_text().splitlines()[0] == BIRDNET_CSV_HEADER
    birdnet = pd.read_csv(paths["birdnet_csv"])
    assert birdnet.values.tolist() == [
        [5.0, 8.0, "Turdus merula", "Eurasian Blackbird", 0.9, recording],
        [5.0, 8.0, "Erithacus rubecula", "European Robin", 0.6, recording]]
    assert paths["kaleidoscope"].read_text().splitlines()[0] == KALEIDOSCOPE_HEADER
    kaleidoscope = pd.read_csv(paths["kaleidoscope"])
    assert kaleidoscope.iloc[0].tolist() == [
        str(tmp_path), "site1", "dawn.wav", 5.0, 3.0, "Turdus merula", "Eurasian Blackbird",
        0.9, -1, -1, -1, 1.5, 1.0]


def test_parquet_table_has_the_species_names(tmp_path):
    pytest.importorskip("pyarrow", reason="the parquet format needs pyarrow")
    paths = birdnet_rows(tmp_path, ("parquet",))
    table = pd.read_parquet(paths["parquet"])
    assert list(table.columns) == detections.PARQUET_COLUMNS == [
        "file", "start_s", "end_s", "label", "scientific_name", "common_name", "confidence"]
    assert table["common_name"].tolist() == ["Eurasian Blackbird", "European Robin"]


def test_species_names_from_birdclef_taxonomy_cornell_and_birdnet_labels(tmp_path):
    (tmp_path / "bc25").mkdir()
    (tmp_path / "bc25" / "taxonomy.csv").write_text(
        "primary_label,inat_taxon_id,scientific_name,common_name,class_name\n"
        "amekes,65373,Falco sparverius,American Kestrel,Aves\n")
    (tmp_path / "bc25" / "train.csv").write_text("primary_label,secondary_labels,filename\n")
    assert catalog.species_names(tmp_path / "bc25" / "train.csv") == {
        "amekes": ("Falco sparverius", "American Kestrel")}
    (tmp_path / "cornell").mkdir()
    (tmp_path / "cornell" / "train.csv").write_text(
        "ebird_code,sci_name,species,filename\naldfly,Empidonax alnorum,Alder Flycatcher,a.mp3\n"
        "aldfly,Empidonax alnorum,Alder Flycatcher,b.mp3\n")
    assert catalog.species_names(tmp_path / "cornell") == {
        "aldfly": ("Empidonax alnorum", "Alder Flycatcher")}
    assert catalog.species_names(tmp_path / "missing") == {}
    assert catalog.label_names("Poecile atricapillus_Black-capped Chickadee") == (
        "Poecile atricapillus", "Black-capped Chickadee")
    assert catalog.label_names("dog") == ("dog", "dog")
    assert catalog.label_names("dog_bark") == ("dog_bark", "dog_bark")  # ESC-50: no binomial


def test_parquet_without_pyarrow_is_a_usage_error(monkeypatch):
    import importlib.util

    from tfbird.config import AnalyzeConfig

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs pyarrow: pip install pyarrow. Received: "
                                         r"formats=\['csv', 'parquet'\]"):
        AnalyzeConfig(formats=("csv", "parquet")).validate()
