"""Nothing lost: a corpus of broken files ends with every file either ingested (with its window
count) or in failures.csv (with its reason), and the exit status follows --max-failures."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
from conftest import requires_shared_audio, shared_recordings, tiny_config
from test_ingest import expected_windows

from tfbird import cli, ingest
from tfbird.waveform import load_waveform

SR = 8000
SMALL = {"audio": {"sample_rate_hz": SR, "window_s": 1.0, "hop_s": 1.0},
         "frontend": {"n_fft": 256, "hop_length": 80, "n_mels": 32, "fmax_hz": 4000.0}}

# filename in train.csv -> (primary label, what the test writes, expected outcome).
# Decisions: a 0.05-s file is padded to one window; a 6-channel file is downmixed; an MP3 cut
# in half decodes to the frames before the cut (as any player would play it) and is ingested;
# an MP3 cut inside its first frame has no audio and is unreadable.
CORPUS = {
    "a/good.wav": ("a", "tone 3.0", "ingested"),
    "b/good.flac": ("b", "tone 2.5", "ingested"),
    "a/short.wav": ("a", "tone 0.05", "ingested"),
    "b/six_channels.wav": ("b", "six channels 2.0", "ingested"),
    "a/cut_in_half.mp3": ("a", "mp3 cut in half", "ingested"),
    "a/zero_bytes.wav": ("a", "zero bytes", "empty"),
    "b/cut_in_header.mp3": ("b", "mp3 cut at 200 bytes", "unreadable"),
    "a/text.wav": ("a", "text", "unreadable"),
    "b/header_only.wav": ("b", "no frames", "no audio after decode"),
    "a/nan.wav": ("a", "all NaN", "all-NaN"),
    "b/some_nan.wav": ("b", "some NaN", "non-finite"),
    "a/missing.wav": ("a", "nothing", "file missing"),
    "zzz/unknown_label.wav": ("zzz", "tone 1.0", "label unknown"),
    "../../etc/passwd": ("a", "nothing", "path outside the data root"),
}


def tone(seconds, sr=SR, channels=1):
    t = np.arange(round(seconds * sr)) / sr
    mono = 0.2 * np.sin(2 * np.pi * 700 * t)
    return np.repeat(mono[:, None], channels, axis=1) * np.linspace(0.5, 1.0, channels)


def write_corpus(root):
    """A BirdCLEF 2025 data set (train.csv + taxonomy.csv) holding ``CORPUS``."""
    audio = root / "train_audio"
    for name, (_, what, _) in CORPUS.items():
        path = audio / name
        if what == "nothing":
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if what.startswith("tone"):
            soundfile.write(path, tone(float(what.split()[1])), SR)
        elif what == "six channels 2.0":
            soundfile.write(path, tone(2.0, channels=6), SR)
        elif what.startswith("mp3"):
            soundfile.write(root / "full.mp3", tone(12.0, sr=22050), 22050)
            data = (root / "full.mp3").read_bytes()
            path.write_bytes(data[: len(data) // 2] if "half" in what else data[:200])
        elif what == "zero bytes":
            path.write_bytes(b"")
        elif what == "text":
            path.write_text("filename,label\nthis is a CSV, not a WAV\n")
        elif what == "no frames":
            soundfile.write(path, np.zeros((0, 1)), SR)
        elif what == "all NaN":
            soundfile.write(path, np.full(SR, np.nan), SR, subtype="FLOAT")
        elif what == "some NaN":
            samples = tone(1.0)[:, 0]
            samples[100:110] = np.nan
            soundfile.write(path, samples, SR, subtype="FLOAT")
    pd.DataFrame({"primary_label": ["a", "b"]}).to_csv(root / "taxonomy.csv", index=False)
    pd.DataFrame({"primary_label": [label for label, _, _ in CORPUS.values()],
                  "secondary_labels": "[]", "filename": list(CORPUS)}).to_csv(
        root / "train.csv", index=False)
    return root


def test_broken_corpus_is_fully_accounted_for(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    cfg = tiny_config(tmp_path, **SMALL, data={"max_failures": 0.9, "files_per_shard": 3})
    manifest = ingest.ingest(cfg, root, tmp_path / "records", progress=False)

    failures = pd.read_csv(tmp_path / "records" / "failures.csv", keep_default_na=False)
    ingested = pd.read_csv(tmp_path / "records" / "ingested.csv", keep_default_na=False)
    expected_failures = {n: outcome for n, (_, _, outcome) in CORPUS.items()
                         if outcome != "ingested"}
    assert dict(zip(failures["filename"], failures["reason"])) == expected_failures
    assert all(d.startswith(r + ": ") for d, r in zip(failures["detail"], failures["reason"]))
    assert sorted(ingested["filename"]) == sorted(
        n for n, (_, _, outcome) in CORPUS.items() if outcome == "ingested")
    assert len(failures) + len(ingested) == len(CORPUS)  # every file exactly once

    audio = root / "train_audio"
    windows = dict(zip(ingested["filename"], ingested["windows"]))
    assert windows["a/short.wav"] == 1          # 0.05 s, padded to one window
    assert windows["b/six_channels.wav"] == 2   # downmixed, 2 s
    assert windows["a/good.wav"] == 3 and windows["b/good.flac"] == 3  # 2.5 s: 0.5-s tail kept
    half = len(load_waveform(audio / "a/cut_in_half.mp3", SR))
    assert 4 * SR < half < 8 * SR  # about 6 s of the 12 s decode
    assert windows["a/cut_in_half.mp3"] == expected_windows(half, cfg.audio)
    assert manifest["failures"]["count"] == len(expected_failures)
    assert manifest["failures"]["by_reason"]["unreadable"] == 2
    assert manifest["inputs"] == len(CORPUS)
    assert manifest["ingested"] == {"count": len(ingested), "windows": int(ingested["windows"].sum()),
                                    "file": "ingested.csv"}
    assert sum(s["examples"] for s in manifest["splits"].values()) == ingested["windows"].sum()
    # A file that failed (decoding, not the catalog) is in no split's recordings.
    assert {name: s["recordings"] for name, s in manifest["splits"].items()} == (
        ingested.groupby("split").size().reindex(["train", "valid"], fill_value=0).to_dict())
    passwd = failures.loc[failures["filename"] == "../../etc/passwd", "path"].item()
    assert passwd.endswith("etc/passwd")


def test_exit_status_follows_max_failures_and_the_summary_always_prints(tmp_path, capsys):
    root = write_corpus(tmp_path / "corpus")
    config_path = tmp_path / "small.yaml"
    config_path.write_text(json.dumps(SMALL))
    args = ["ingest", "--config", str(config_path), "--data", str(root), "--quiet"]
    num_failed = sum(1 for _, _, outcome in CORPUS.values() if outcome != "ingested")

    assert cli.main([*args, "--out", str(tmp_path / "r1"), "--max-failures", "3"]) == 2
    captured = capsys.readouterr()
    assert "Ingested 5 file(s)" in captured.out and f"failed {num_failed} of 14" in captured.out
    assert f"error: {num_failed} of 14 files failed" in captured.err

    assert cli.main([*args, "--out", str(tmp_path / "r2"), "--max-failures", "0.7"]) == 0
    assert f"failed {num_failed} of 14; all-NaN: 1; empty: 1" in capsys.readouterr().out


def test_unknown_worker_numbers_are_refused(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    cfg = tiny_config(tmp_path, **SMALL)
    with pytest.raises(ValueError, match="worker_index=2"):
        ingest.ingest(cfg, root, tmp_path / "r", progress=False, workers=2, worker_index=2)


@requires_shared_audio
def test_every_shared_recording_ingests_as_a_folder_per_class_data_set(tmp_path):
    """``../shared/audio`` read as folders (one folder per source): 25 files, 0 failures,
    window counts from the decoded durations."""
    rows = shared_recordings()
    cfg = tiny_config(tmp_path, data={"max_failures": 0, "files_per_shard": 8,
                                      "layout": "folders"})
    root = rows[0]["path"].rsplit("/", 2)[0]
    manifest = ingest.ingest(cfg, root, tmp_path / "records", progress=False)
    assert manifest["failures"]["count"] == 0
    ingested = pd.read_csv(tmp_path / "records" / "ingested.csv")
    windows = dict(zip(ingested["filename"], ingested["windows"]))
    assert sorted(windows) == sorted(r["local_file"] for r in rows)
    for row in rows:
        decoded = len(load_waveform(row["path"], cfg.audio.sample_rate_hz))
        assert abs(decoded / 32000 - float(row["duration_s"])) < 0.15, row["local_file"]
        assert windows[row["local_file"]] == expected_windows(decoded, cfg.audio), row["local_file"]
    assert manifest["labels"] == sorted({r["local_file"].split("/")[0] for r in rows})
