"""Data set layouts (Cornell 2020, BirdCLEF 2023, BirdCLEF 2025, folder per class, Raven
tables) -> records whose multi-hot targets are checked window by window."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf
from conftest import SHARED_AUDIO, requires_shared_audio, tiny_config

from tfbird import catalog, config, ingest, records

SR = 8000  # Small settings: 1-s windows at 8 kHz, 32 mel bands.
SMALL = {"audio": {"sample_rate_hz": SR, "window_s": 1.0, "hop_s": 1.0},
         "frontend": {"n_fft": 256, "hop_length": 80, "n_mels": 32, "fmax_hz": 4000.0}}


def small_config(tmp_path, **data):
    return tiny_config(tmp_path, **SMALL, data={"max_failures": 0.5, **data})


def write_tone(path, seconds, sr=SR, channels=1, frequency_hz=1000.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sr)) / sr
    mono = 0.2 * np.sin(2 * np.pi * frequency_hz * t)
    soundfile.write(path, np.repeat(mono[:, None], channels, axis=1), sr)
    return path


def window_labels(records_dir) -> dict[str, list[set[str]]]:
    """``{filename: [labels of window 0, labels of window 1, ...]}`` from all shards."""
    manifest = json.loads((records_dir / "manifest.json").read_text())
    labels, found = manifest["labels"], {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            for serialized in tf.data.TFRecordDataset(str(records_dir / shard["file"])):
                example = records.parse_example(serialized, len(labels),
                                                tuple(manifest["feature"]["shape"]))
                name = example[records.FILENAME].numpy().decode()
                start_s = float(example[records.START_S].numpy())
                target = example[records.LABELS].numpy()
                found.setdefault(name, []).append(
                    (start_s, {labels[i] for i in np.flatnonzero(target)}))
    return {name: [s for _, s in sorted(windows, key=lambda w: w[0])]
            for name, windows in found.items()}


def failures_of(records_dir) -> dict[str, str]:
    table = pd.read_csv(records_dir / "failures.csv", keep_default_na=False)
    return dict(zip(table["filename"], table["reason"]))


# --- Cornell 2020 -------------------------------------------------------------------------


def write_cornell(root):
    rows = [
        # ebird_code, filename, secondary_labels (species names), species, sci_name, rating, pitch
        ["aldfly", "XC1.wav", "['Empidonax traillii_Willow Flycatcher']", "Alder Flycatcher",
         "Empidonax alnorum", "3.5", "Level"],
        ["wilfly", "XC2.wav", ("['Setophaga petechia_Yellow Warbler', "
                               "'Empidonax alnorum_Alder Flycatcher']"),
         "Willow Flycatcher", "Empidonax traillii", "4.0", "Not specified"],
        ["amecro", "XC3.wav", "[]", "American Crow", "Corvus brachyrhynchos", "", "Both"],
    ]
    table = pd.DataFrame(rows, columns=["ebird_code", "filename", "secondary_labels", "species",
                                        "sci_name", "rating", "pitch"])
    table["primary_label"] = table["sci_name"] + "_" + table["species"]
    table["duration"] = ["2", "3", "1"]
    table["sampling_rate"] = "8000 (Hz)"
    table["latitude"], table["longitude"] = "42.5", "-76.4"
    table["author"], table["license"] = "someone", "CC BY-NC-SA 4.0"
    table["type"] = "call"  # Not kept: Cornell keeps only the listed metadata.
    root.mkdir(parents=True)
    table.to_csv(root / "train.csv", index=False)
    for code, filename, seconds in zip(table["ebird_code"], table["filename"], [2, 3, 1]):
        write_tone(root / "train_audio" / code / filename, seconds)
    return root


def test_cornell_secondary_names_become_codes_window_by_window(tmp_path):
    root = write_cornell(tmp_path / "cornell")
    assert catalog.detect_layout(root) == "cornell"
    table, labels = catalog.read_catalog(root)
    assert labels == ["aldfly", "amecro", "wilfly"]
    assert table["secondary_labels"].tolist() == [["wilfly"], ["aldfly"], []]  # warbler: no class
    assert table["path"][0] == str((root / "train_audio" / "aldfly" / "XC1.wav").absolute())
    assert {"rating", "duration", "pitch", "sampling_rate", "latitude", "longitude", "author",
            "license"} <= set(table.columns) and "type" not in table.columns

    ingest.ingest(small_config(tmp_path), root, tmp_path / "records", progress=False)
    assert window_labels(tmp_path / "records") == {
        "XC1.wav": [{"aldfly", "wilfly"}] * 2,
        "XC2.wav": [{"wilfly", "aldfly"}] * 3,
        "XC3.wav": [{"amecro"}],
    }


def test_detect_layout_from_csv_columns_and_files(tmp_path):
    cornell = write_cornell(tmp_path / "cornell")
    assert catalog.detect_layout(cornell / "train.csv") == "cornell"
    plain = tmp_path / "plain"
    write_tone(plain / "x" / "1.wav", 1.0)
    (plain / "train.csv").write_text("filename,label\nx/1.wav,a\n")
    assert catalog.detect_layout(plain) == "csv"
    table, labels = catalog.read_catalog(plain)  # a train.csv that is a plain CSV
    assert labels == ["a"] and table["path"][0] == str((plain / "x" / "1.wav").absolute())
    (plain / "taxonomy.csv").write_text("primary_label\na\n")
    (plain / "meta.csv").write_text("primary_label,secondary_labels,filename\na,[],1.ogg\n")
    assert catalog.detect_layout(plain / "meta.csv") == "birdclef2025"
    with pytest.raises(ValueError, match="Unknown layout.*layout='kaggle'"):
        catalog.read_catalog(plain, layout="kaggle")


# --- BirdCLEF 2023 ------------------------------------------------------------------------


def test_birdclef_2023_window_by_window(tmp_path):
    root = tmp_path / "birdclef-2023"
    rows = [["abethr1", "['grecor', 'zzzunk']", "['song']", "abethr1/XC1.ogg", "4.0"],
            ["grecor", "[]", "['call']", "grecor/XC2.ogg", "2.5"],
            ["grecor", "['abethr1']", "['call']", "grecor/XC3.ogg", "5.0"]]
    root.mkdir()
    pd.DataFrame(rows, columns=["primary_label", "secondary_labels", "type", "filename",
                                "rating"]).to_csv(root / "train_metadata.csv", index=False)
    for (_, _, _, filename, _), seconds in zip(rows, [2.0, 1.2, 3.0]):
        write_tone(root / "train_audio" / filename, seconds)
    assert catalog.detect_layout(root) == "birdclef"

    ingest.ingest(small_config(tmp_path), root, tmp_path / "records", progress=False)
    assert window_labels(tmp_path / "records") == {
        "abethr1/XC1.ogg": [{"abethr1", "grecor"}] * 2,   # zzzunk has no class
        "grecor/XC2.ogg": [{"grecor"}],                    # 0.2-s tail dropped
        "grecor/XC3.ogg": [{"grecor", "abethr1"}] * 3,
    }


def test_birdclef_2021_bare_filenames_live_under_the_label_folder(tmp_path):
    root = tmp_path / "bc21"
    root.mkdir()
    pd.DataFrame([["a", "[]", "XC9.ogg"]], columns=["primary_label", "secondary_labels",
                                                     "filename"]).to_csv(
        root / "train_metadata.csv", index=False)
    (root / "train_short_audio").mkdir()
    table, _ = catalog.read_catalog(root)
    assert table["path"][0] == str((root / "train_short_audio" / "a" / "XC9.ogg").absolute())


# --- BirdCLEF 2025 ------------------------------------------------------------------------


def test_birdclef_2025_labels_come_from_the_taxonomy(tmp_path):
    root = tmp_path / "birdclef-2025"
    root.mkdir()
    pd.DataFrame({"primary_label": ["1139490", "amakin1", "bbwduc", "grekis"],
                  "scientific_name": ["Ragoniella pulchella", "Chloroceryle amazona",
                                      "Dendrocygna autumnalis", "Pitangus sulphuratus"],
                  "class_name": ["Insecta", "Aves", "Aves", "Aves"]}).to_csv(
        root / "taxonomy.csv", index=False)
    pd.DataFrame({
        "primary_label": ["1139490", "amakin1", "zzzz"],
        "secondary_labels": ["['']", "['bbwduc', 'notaxon']", "[]"],
        "filename": ["1139490/CSA1.ogg", "amakin1/XC2.ogg", "zzzz/XC3.ogg"],
        "rating": ["0.0", "4.5", "3.0"],
        "collection": ["CSA", "XC", "XC"],
    }).to_csv(root / "train.csv", index=False)
    write_tone(root / "train_audio" / "1139490" / "CSA1.ogg", 2.0)
    write_tone(root / "train_audio" / "amakin1" / "XC2.ogg", 1.0)
    write_tone(root / "train_audio" / "zzzz" / "XC3.ogg", 1.0)
    assert catalog.detect_layout(root) == "birdclef2025"

    cfg = small_config(tmp_path, validation_fraction=0.5)
    manifest = ingest.ingest(cfg, root, tmp_path / "records", progress=False)
    assert manifest["labels"] == ["1139490", "amakin1", "bbwduc", "grekis"]  # with no recordings
    assert window_labels(tmp_path / "records") == {
        "1139490/CSA1.ogg": [{"1139490"}] * 2,
        "amakin1/XC2.ogg": [{"amakin1", "bbwduc"}],
    }
    assert failures_of(tmp_path / "records") == {"zzzz/XC3.ogg": "label unknown"}


# --- Folder per class ---------------------------------------------------------------------


def test_folder_per_class_with_multi_label_negative_and_noise_folders(tmp_path):
    root = tmp_path / "folders"
    write_tone(root / "a" / "1.wav", 2.0)
    write_tone(root / "a,b" / "2.flac", 1.0)
    write_tone(root / "b" / "nested" / "3.ogg", 1.0)
    write_tone(root / "-b" / "4.wav", 2.0)          # a negative: all-zero target
    write_tone(root / "Noise" / "5.wav", 1.0)       # non-event: all-zero target
    write_tone(root / "background" / "6.wav", 1.0)  # non-event, any case
    write_tone(root / "stray.wav", 1.0)             # not in a class folder: a failure
    (root / "a" / "notes.txt").write_text("not audio, not an input")
    assert catalog.detect_layout(root) == "folders"

    cfg = small_config(tmp_path, validation_fraction=0.3)
    manifest = ingest.ingest(cfg, root, tmp_path / "records", progress=False)
    assert manifest["labels"] == ["a", "b"]
    assert window_labels(tmp_path / "records") == {
        "a/1.wav": [{"a"}] * 2, "a,b/2.flac": [{"a", "b"}], "b/nested/3.ogg": [{"b"}],
        "-b/4.wav": [set()] * 2, "Noise/5.wav": [set()], "background/6.wav": [set()],
    }
    assert failures_of(tmp_path / "records") == {"stray.wav": "label unknown"}


def test_one_selection_table_among_class_folders_is_detected_as_folders(tmp_path):
    root = tmp_path / "mixed"
    for k in range(24):
        write_tone(root / ("a" if k % 2 else "b") / f"{k}.wav", 0.2)
    write_tone(root / "a" / "annotated.wav", 0.2)
    (root / "a" / "annotated.selections.txt").write_text(RAVEN_HEADER)
    assert catalog.detect_layout(root) == "folders"  # 1 of 25 recordings annotated
    table, _ = catalog.read_catalog(root)
    assert len(table) == 25


def test_a_few_tables_without_class_folders_ask_for_the_layout(tmp_path):
    root = tmp_path / "flat"
    for k in range(3):
        write_tone(root / f"{k}.wav", 0.2)
    (root / "0.selections.txt").write_text(RAVEN_HEADER)
    with pytest.raises(ValueError, match=r"Only 1 of 3 recordings have a Raven selection "
                                         r"table .* give --layout raven"):
        catalog.detect_layout(root)


# --- Raven selection tables ---------------------------------------------------------------

RAVEN_HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\t"
                "High Freq (Hz)\tSpecies\n")


def raven_line(n, begin_s, end_s, species, view="Spectrogram 1"):
    return f"{n}\t{view}\t1\t{begin_s}\t{end_s}\t1000\t3000\t{species}\n"


def test_raven_boxes_label_the_windows_they_overlap(tmp_path):
    root = tmp_path / "raven"
    write_tone(root / "site1" / "rec1.wav", 12.0)
    (root / "site1" / "rec1.Table.1.selections.txt").write_text(
        RAVEN_HEADER
        + raven_line(1, 0.5, 1.5, "A")        # 0.5 s in windows 0 and 1: both
        + raven_line(1, 0.5, 1.5, "A", "Waveform 1")  # Raven's duplicate row: harmless
        + raven_line(2, 3.2, 3.45, "B")       # short box, wholly in window 3
        + raven_line(3, 4.9, 5.2, "A")        # 0.3-s box split 0.1/0.2: in neither
        + raven_line(4, 7.0, 9.6, "A")        # windows 7, 8 and 9 (0.6 s)
        + raven_line(5, 10.8, 11.2, "B"))     # 0.4-s box split 0.2/0.2: in neither
    write_tone(root / "rec2.flac", 2.0)
    (root / "rec2.selections.txt").write_text(RAVEN_HEADER)  # annotated, no calls
    (root / "rec3.Table.1.selections.txt").write_text(RAVEN_HEADER + raven_line(1, 0, 1, "B"))
    write_tone(root / "unannotated.wav", 1.0)  # no table: not part of the data set
    assert catalog.detect_layout(root) == "raven"

    cfg = small_config(tmp_path, min_overlap_s=0.5, validation_fraction=0.3)
    manifest = ingest.ingest(cfg, root, tmp_path / "records", progress=False)
    assert manifest["labels"] == ["A", "B"]
    a, b, none = {"A"}, {"B"}, set()
    assert window_labels(tmp_path / "records") == {
        "site1/rec1.wav": [a, a, none, b, none, none, none, a, a, a, none, none],
        "rec2.flac": [none, none],
    }
    assert failures_of(tmp_path / "records") == {"rec3.Table.1.selections.txt": "file missing"}


def test_raven_label_column_is_checked_and_named(tmp_path):
    write_tone(tmp_path / "r.wav", 1.0)
    (tmp_path / "r.selections.txt").write_text(RAVEN_HEADER + raven_line(1, 0, 1, "A"))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['Annotation'\].*"
                                         r"label_column='Annotation'"):
        catalog.read_catalog(tmp_path, layout="raven", label_column="Annotation")


def test_raven_boxes_with_ignored_labels_are_no_class(tmp_path):
    write_tone(tmp_path / "r.wav", 1.0)
    (tmp_path / "r.selections.txt").write_text(
        RAVEN_HEADER + raven_line(1, 0, 1, "A") + raven_line(2, 1, 2, " ? ")
        + raven_line(3, 2, 3, "Unknown") + raven_line(4, 3, 4, "") + raven_line(5, 4, 5, "n/a"))
    table, labels = catalog.read_catalog(tmp_path, layout="raven")  # default ?, "", unknown
    assert labels == ["A", "n/a"]
    assert [label for _, _, label in table["boxes"][0]] == ["A", "n/a"]
    cfg = config.from_dict({"data": {"ignore_labels": ["?", "unknown", "N/A"]}}).validate()
    table, labels = catalog.read_catalog(tmp_path, layout="raven",
                                         ignore_labels=cfg.data.ignore_labels)
    assert labels == ["A"] and table["primary_label"].tolist() == ["A"]


@requires_shared_audio
def test_the_real_raven_table_labels_5s_windows(tmp_path):
    root = tmp_path / "gwwa"
    root.mkdir()
    shutil.copy(SHARED_AUDIO / "opensoundscape" / "13738.Table.1.selections.txt", root)
    (root / "13738.mp3").symlink_to(SHARED_AUDIO / "opensoundscape" / "13738.mp3")
    table = root / "13738.Table.1.selections.txt"
    boxes = catalog.read_selection_table(table, "Species", ignore_labels=())
    assert len(boxes) == 8 and boxes[2] == (13.464641288, 15.00577493, "?")
    assert catalog.read_selection_table(table, "Species") == boxes[:2] + boxes[3:]
    cfg = tiny_config(tmp_path, data={"max_failures": 0, "validation_fraction": 0.5})
    manifest = ingest.ingest(cfg, root, tmp_path / "records", progress=False)
    assert manifest["labels"] == ["GWWA_song"]  # data.ignore_labels: "?" is no class
    song, none = {"GWWA_song"}, set()
    # 54.8 s -> 11 windows of 5 s; the dropped "?" box (13.46-15.01 s) labels no window.
    assert window_labels(tmp_path / "records") == {"13738.mp3": [
        song, song, none, none, song, song, song, none, song, none, song]}


# --- Window selection ---------------------------------------------------------------------


def starts_of(records_dir) -> dict[str, list[float]]:
    """``{filename: sorted window start times}`` from all shards."""
    manifest = json.loads((records_dir / "manifest.json").read_text())
    starts = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            for serialized in tf.data.TFRecordDataset(str(records_dir / shard["file"])):
                example = records.parse_example(serialized, len(manifest["labels"]),
                                                tuple(manifest["feature"]["shape"]))
                name = example[records.FILENAME].numpy().decode()
                starts.setdefault(name, []).append(float(example[records.START_S].numpy()))
    return {name: sorted(values) for name, values in starts.items()}


def test_window_selection_all_first_and_seeded_random(tmp_path):
    write_tone(tmp_path / "data" / "long.wav", 10.0)
    write_tone(tmp_path / "data" / "short.wav", 2.0)
    (tmp_path / "data" / "list.csv").write_text("filename,label\nlong.wav,a\nshort.wav,a\n")
    data = tmp_path / "data" / "list.csv"

    def run(name, **selection):
        cfg = small_config(tmp_path, **selection)
        ingest.ingest(cfg, data, tmp_path / name, progress=False)
        return starts_of(tmp_path / name)

    assert run("all") == {"long.wav": list(range(10)), "short.wav": [0, 1]}
    assert run("first", window_selection="first", windows_per_recording=3) == {
        "long.wav": [0, 1, 2], "short.wav": [0, 1]}
    random = run("random", window_selection="random", windows_per_recording=3)
    assert random["short.wav"] == [0, 1]  # fewer windows than N: all of them
    chosen = random["long.wav"]
    assert len(chosen) == 3 and len(set(chosen)) == 3 and set(chosen) <= set(range(10))
    assert chosen != [0, 1, 2]  # not the first three (fixed by the seed, so not flaky)
    assert run("again", window_selection="random", windows_per_recording=3) == random
    seeds = [run(f"seed{seed}", window_selection="random", windows_per_recording=3,
                 seed=seed)["long.wav"] for seed in (1, 2)]
    assert chosen != seeds[0] or chosen != seeds[1]  # the seed changes the choice


def test_new_data_settings_are_validated():
    from tfbird import config

    for override, name in [("data.layout=kaggle", "data.layout"),
                           ("data.window_selection=middle", "data.window_selection"),
                           ("data.windows_per_recording=0", "data.windows_per_recording"),
                           ("data.min_overlap_s=-1", "data.min_overlap_s")]:
        with pytest.raises(ValueError, match=f"Invalid config value {name}. Received"):
            config.load(None, [override])
