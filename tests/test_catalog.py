"""Data set layouts -> catalog table; the split is by recording and stratified."""

import pandas as pd
import pytest

from tfbird import catalog

BIRDCLEF_COLUMNS = ["primary_label", "secondary_labels", "type", "filename"]


def write_birdclef(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=BIRDCLEF_COLUMNS).to_csv(root / "train_metadata.csv", index=False)
    return root


def test_birdclef_layout(tmp_path):
    root = write_birdclef(tmp_path / "bc", [
        ["amecro", "['norcar', 'zzzunk']", "['call']", "amecro/XC1.ogg"],
        ["norcar", "[]", "['song']", "norcar/XC2.ogg"],
    ])
    table, labels = catalog.read_catalog(root)
    assert labels == ["amecro", "norcar"]
    assert table["secondary_labels"].tolist() == [["norcar"], []]  # zzzunk has no class
    assert table["path"][0] == str((root / "train_audio" / "amecro" / "XC1.ogg").absolute())
    assert table["filename"].tolist() == ["amecro/XC1.ogg", "norcar/XC2.ogg"]


def test_birdclef_2021_audio_folder(tmp_path):
    root = write_birdclef(tmp_path / "bc21", [["a", "[]", "[]", "a/1.ogg"]])
    (root / "train_short_audio").mkdir()
    table, _ = catalog.read_catalog(root)
    assert "train_short_audio" in table["path"][0]


def test_plain_csv(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("filename,label,secondary_labels\nx/1.wav,b,a\ny/2.wav,a,\n")
    table, labels = catalog.read_catalog(csv_path)
    assert labels == ["a", "b"]
    assert table["secondary_labels"].tolist() == [["a"], []]
    assert table["path"][1] == str((tmp_path / "y" / "2.wav").absolute())


def test_missing_path_and_columns_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*nowhere"):
        catalog.read_catalog(tmp_path / "nowhere")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,species\n1.wav,a\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['filename', 'label'\]"):
        catalog.read_catalog(bad)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="No known data layout"):
        catalog.read_catalog(tmp_path / "empty_dir")


def test_paths_outside_the_data_root_are_refused_file_by_file(tmp_path):
    root = write_birdclef(tmp_path / "bc", [["a", "[]", "[]", "../../etc/passwd"],
                                            ["a", "[]", "[]", "a/1.ogg"]])
    table, labels = catalog.read_catalog(root)
    assert labels == ["a"]
    assert table["error"][0].startswith("path outside the data root: '../../etc/passwd'")
    assert table["error"][1] == ""


def test_split_is_stratified_by_class_and_by_recording():
    table = pd.DataFrame({
        "path": [f"/r/{i}.wav" for i in range(23)],
        "filename": [f"{i}.wav" for i in range(23)],
        "primary_label": ["a"] * 10 + ["b"] * 12 + ["c"],
        "secondary_labels": [[]] * 23,
    })
    split = catalog.assign_split(table, validation_fraction=0.2, seed=3)
    valid = split[split["split"] == "valid"]
    assert valid["primary_label"].value_counts().to_dict() == {"a": 2, "b": 2}
    assert (split["split"] == "train").sum() == 19  # the single 'c' recording stays in train
    again = catalog.assign_split(table, validation_fraction=0.2, seed=3)
    assert again["split"].tolist() == split["split"].tolist()
