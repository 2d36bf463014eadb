"""Analysis: streaming decode, windowing with overlap, merging calls, outputs that cover each
recording, resuming, the error log, and a 2-minute real recording."""

import dataclasses
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile
from conftest import requires_shared_audio, shared_recordings

from tfbird import analyze, artifacts, cli, detections, exporter
from tfbird.config import AnalyzeConfig
from tfbird.waveform import AudioDecodeError, load_waveform, stream_waveform


def tone(duration_s, sample_rate_hz, freq_hz=2000.0, channels=1):
    t = np.arange(int(duration_s * sample_rate_hz)) / sample_rate_hz
    mono = 0.3 * np.sin(2 * np.pi * freq_hz * t)
    return np.stack([mono] * channels, 1) if channels > 1 else mono


# --- Streaming and windows (no model) ---------------------------------------------------


def test_streamed_decode_equals_decoding_the_whole_file(tmp_path):
    path = tmp_path / "stereo.flac"
    soundfile.write(path, tone(7.3, 44100, channels=2), 44100)
    streamed = np.concatenate(list(stream_waveform(path, 32000, block_s=0.7)))
    whole = load_waveform(path, 32000)
    assert abs(len(streamed) - len(whole)) <= 1
    n = min(len(streamed), len(whole))
    assert np.abs(streamed[:n] - whole[:n]).max() < 1e-4


def test_streamed_decode_reports_bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio")
    for name, reason in [("missing.wav", "file missing"), ("empty.wav", "empty"),
                         ("text.wav", "unreadable")]:
        with pytest.raises(AudioDecodeError, match=f"^{reason}: .*{name}"):
            list(stream_waveform(tmp_path / name, 32000))


def window_starts(num_samples: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """Start samples of the windows over a recording: the rule ``analyze.stream_windows``
    follows, written out as the reference of these tests.

    Windows start every ``hop_samples``; if the last full window ends before the recording
    does, one more window ends exactly at the end. A recording shorter than one window has
    one window at 0 (padded by the model's ``audio.pad_mode``).
    """
    if num_samples <= window_samples:
        return np.zeros(1 if num_samples else 0, np.int64)
    starts = np.arange(0, num_samples - window_samples + 1, hop_samples, dtype=np.int64)
    if starts[-1] + window_samples < num_samples:
        starts = np.append(starts, num_samples - window_samples)
    return starts


@pytest.mark.parametrize("num_samples", [3, 10, 23, 25, 40, 41])
def test_stream_windows_match_window_starts_for_any_blocks(num_samples):
    rng = np.random.default_rng(num_samples)
    signal = np.arange(num_samples, dtype=np.float32) + 1  # sample i holds i + 1
    cuts = np.sort(rng.choice(np.arange(1, num_samples), size=min(4, num_samples - 1),
                              replace=False))
    windows = list(analyze.stream_windows(np.split(signal, cuts), window_samples=10,
                                          hop_samples=6))
    starts = window_starts(num_samples, 10, 6)
    assert [s for s, _ in windows] == starts.tolist()
    for start, window in windows:
        real = signal[start:start + 10]
        np.testing.assert_array_equal(window, np.pad(real, (0, 10 - len(real))))
    # The windows cover the recording, and only the last may start off the hop grid.
    assert starts[0] == 0 and min(starts[-1] + 10, num_samples) == num_samples
    assert all(s % 6 == 0 for s in starts[:-1])


@pytest.mark.parametrize("pad_mode", ["zeros", "repeat"])
def test_a_clip_shorter_than_the_window_is_padded_as_ingest_pads_it(pad_mode):
    from tfbird.config import AudioConfig
    from tfbird.waveform import stream_cut_windows

    clip = np.arange(1, 8, dtype=np.float32)  # 7 samples, a window of 10
    audio = AudioConfig(sample_rate_hz=1000, window_s=0.01, hop_s=0.01, pad_mode=pad_mode)
    [(trained, _)] = list(stream_cut_windows([clip[:3], clip[3:]], audio))
    [(start, analyzed)] = list(analyze.stream_windows([clip[:3], clip[3:]], 10, 10, pad_mode))
    expected = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3] if pad_mode == "repeat" else [*range(1, 8), 0, 0, 0]
    assert start == 0
    np.testing.assert_array_equal(analyzed, expected)
    np.testing.assert_array_equal(trained[0], expected)


def test_the_training_tail_rule_scores_the_windows_ingest_cuts(tmp_path):
    """A 5-s clip, 3-s windows every 0.5 s (as BirdNET records of ESC-10): ingest cuts 8
    windows, the last three padded with the clip's start; ``tail="min_fraction"`` scores
    those 8, the default end-aligned rule 5."""
    from tfbird.config import AudioConfig
    from tfbird.waveform import stream_cut_windows

    rate = 100
    clip = np.random.default_rng(0).normal(size=5 * rate).astype(np.float32)
    soundfile.write(tmp_path / "clip.wav", clip, rate, subtype="FLOAT")
    audio = AudioConfig(sample_rate_hz=rate, window_s=3.0, hop_s=0.5, pad_mode="repeat")
    trained = np.concatenate([w for w, _ in stream_cut_windows([clip], audio)])
    info = dataclasses.replace(fake_info(sample_rate_hz=rate, window_s=3.0), pad_mode="repeat",
                               min_window_fraction=audio.min_window_fraction)
    seen = []
    def predict(windows):
        seen.append(windows)
        return {analyze.OUTPUT_NAME: np.zeros([len(windows), 2], np.float32)}
    training_tail = AnalyzeConfig(overlap_s=2.5, tail="min_fraction")
    scored = analyze.score_recording(tmp_path / "clip.wav", predict, info, training_tail)
    assert scored.start_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    np.testing.assert_allclose(np.concatenate(seen), trained, atol=1e-6)
    end_aligned = analyze.score_recording(tmp_path / "clip.wav", predict, info,
                                          AnalyzeConfig(overlap_s=2.5))
    assert end_aligned.start_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="analyze.tail"):
        AnalyzeConfig(tail="padded").validate()


def test_window_starts_with_overlap():
    assert window_starts(32, 10, 5).tolist() == [0, 5, 10, 15, 20, 22]
    assert window_starts(30, 10, 10).tolist() == [0, 10, 20]
    assert window_starts(4, 10, 5).tolist() == [0]
    assert window_starts(0, 10, 5).tolist() == []
    with pytest.raises(ValueError, match="Received: hop_samples=11"):
        list(analyze.stream_windows([np.zeros(30)], 10, 11))


def fake_info(labels=("sp00", "sp01"), sample_rate_hz=100, window_s=5.0):
    return analyze.ModelInfo(path=None, kind="fake", labels=tuple(labels),
                             sample_rate_hz=sample_rate_hz,
                             window_samples=int(window_s * sample_rate_hz),
                             band_hz=(20.0, 16000.0), modified_time=0.0)


def test_overlap_and_merge_on_a_recording_with_known_calls():
    """60 s at 100 Hz; sp00 calls at 12-18 s and 40-41 s, sp01 at 30-31 s. The fake model
    scores a window 0.9 for a species whose call it overlaps, else 0.05."""
    info = fake_info()
    calls = {"sp00": [(12.0, 18.0), (40.0, 41.0)], "sp01": [(30.0, 31.0)]}
    cfg = AnalyzeConfig(overlap_s=2.5, min_conf=0.5, merge_consecutive=True)
    hop = info.window_samples - analyze.overlap_samples(cfg.overlap_s, info)
    start_s = window_starts(60 * 100, info.window_samples, hop) / 100
    end_s = start_s + info.window_s
    scores = np.array([[0.9 if any(a < e and s < b for a, b in calls[label]) else 0.05
                        for label in info.labels] for s, e in zip(start_s, end_s)])
    assert np.allclose(np.diff(start_s), 2.5)

    merged = analyze.detect(analyze.RecordingScores(scores, start_s, 60.0), info, cfg, "rec.wav")
    assert merged[["start_s", "end_s", "label"]].values.tolist() == [
        [7.5, 22.5, "sp00"], [27.5, 35.0, "sp01"], [37.5, 45.0, "sp00"]]
    for label, spans in calls.items():  # every call lies inside one merged row
        rows = merged[merged["label"] == label]
        for a, b in spans:
            assert ((rows["start_s"] <= a) & (rows["end_s"] >= b)).sum() == 1

    unmerged = analyze.detect(analyze.RecordingScores(scores, start_s, 60.0), info,
                              AnalyzeConfig(overlap_s=2.5, min_conf=0.5), "rec.wav")
    assert len(unmerged) == 5 + 2 + 2  # windows overlapping each call
    back_to_back = window_starts(60 * 100, info.window_samples, info.window_samples)
    assert len(back_to_back) == 12


def test_sed_detections_take_begin_and_end_from_the_framewise_scores():
    """20 s at 100 Hz, 5-s windows overlapping by 2.5 s, 51 frames per window (0.1 s apart).
    sp00 calls at 3.0-4.0 s and 11.2-13.6 s; sp01 at 16.0-16.5 s. The handcrafted framewise
    score is 0.9 on frames inside a call, else 0.05; the clip score is its maximum."""
    info = fake_info()
    calls = {"sp00": [(3.0, 4.0), (11.2, 13.6)], "sp01": [(16.0, 16.5)]}
    cfg = AnalyzeConfig(overlap_s=2.5, min_conf=0.5, merge_consecutive=True)
    start_s = window_starts(20 * 100, info.window_samples, 250) / 100
    frame_times = np.linspace(0.0, info.window_s, 51)  # frame t centred at t * 0.1 s
    framewise = np.full([len(start_s), 51, 2], 0.05)
    for k, label in enumerate(info.labels):
        for begin, end in calls[label]:
            inside = (start_s[:, None] + frame_times >= begin) & (start_s[:, None] + frame_times <= end)
            framewise[..., k][inside] = 0.9
    spans = detections.framewise_spans(framewise, analyze.class_thresholds(info.labels, cfg),
                                       info.window_s)
    scored = analyze.RecordingScores(framewise.max(axis=1), start_s, 20.0, spans)

    rows = analyze.detect(scored, info, cfg, "rec.wav")
    assert rows["label"].tolist() == ["sp00", "sp00", "sp01"]
    # Each call, to half a frame (0.05 s), instead of the 5-s window edges.
    np.testing.assert_allclose(rows[["start_s", "end_s"]].to_numpy(),
                               [[2.95, 4.05], [11.15, 13.65], [15.95, 16.55]], atol=1e-6)
    unmerged = analyze.detect(scored, info, AnalyzeConfig(overlap_s=2.5, min_conf=0.5),
                              "rec.wav")
    second_call = unmerged[(unmerged["label"] == "sp00") & (unmerged["start_s"] > 10)]
    assert len(second_call) == 3  # windows at 7.5, 10 and 12.5 s hear it
    np.testing.assert_allclose(second_call[["start_s", "end_s"]].to_numpy(),
                               [[11.15, 12.5], [11.15, 13.65], [12.5, 13.65]], atol=1e-6)


def test_per_class_thresholds_from_an_evaluate_thresholds_file(tmp_path):
    info = fake_info(labels=("sp00", "sp01", "sp02"))
    pd.DataFrame({"label": ["sp00", "sp01"], "threshold": [0.8, 0.3]}).to_csv(
        tmp_path / "thresholds.csv", index=False)
    cfg = AnalyzeConfig(min_conf=0.5, thresholds=str(tmp_path / "thresholds.csv"))
    np.testing.assert_allclose(analyze.class_thresholds(info.labels, cfg), [0.8, 0.3, 0.5])
    scores = np.array([[0.7, 0.4, 0.6], [0.9, 0.2, 0.4]])
    scored = analyze.RecordingScores(scores, np.array([0.0, 5.0]), 10.0)
    rows = analyze.detect(scored, info, cfg, "rec.wav")
    # sp00 needs 0.8 (0.7 dropped, 0.9 kept); sp01 0.3 (0.4 kept); sp02 min_conf 0.5.
    assert rows[["start_s", "label"]].values.tolist() == [[0.0, "sp02"], [0.0, "sp01"],
                                                          [5.0, "sp00"]]
    without = analyze.detect(scored, info, AnalyzeConfig(min_conf=0.5), "rec.wav")
    assert without["label"].tolist() == ["sp00", "sp02", "sp00"]
    pd.DataFrame({"label": ["owl"], "threshold": [0.5]}).to_csv(tmp_path / "bad.csv",
                                                                index=False)
    with pytest.raises(ValueError, match=r"unknown=\['owl'\]"):
        analyze.class_thresholds(info.labels, AnalyzeConfig(thresholds=str(tmp_path / "bad.csv")))
    with pytest.raises(ValueError, match="Thresholds file not found"):
        analyze.class_thresholds(info.labels, AnalyzeConfig(thresholds=str(tmp_path / "no.csv")))


def test_overlap_must_be_shorter_than_the_window():
    with pytest.raises(ValueError, match="Received: overlap_s=5.0"):
        analyze.overlap_samples(5.0, fake_info())


def test_collect_recordings_from_folders_files_and_lists(tmp_path):
    (tmp_path / "site" / "night").mkdir(parents=True)
    for name in ["site/a.wav", "site/night/b.flac", "site/notes.md", "c.ogg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# recordings\nc.ogg\n\nsite/a.wav\n")
    pairs = analyze.collect_recordings([tmp_path / "site"])
    assert [(p.name, str(n)) for p, n in pairs] == [("a.wav", "a.wav"),
                                                    ("b.flac", "night/b.flac")]
    listed = analyze.collect_recordings([tmp_path / "list.txt"])
    assert [str(n) for _, n in listed] == ["c.ogg", "a.wav"]
    with pytest.raises(ValueError, match="same outputs"):
        analyze.collect_recordings([tmp_path / "site", tmp_path / "list.txt"])
    with pytest.raises(ValueError, match="Input not found"):
        analyze.collect_recordings([tmp_path / "nope.wav"])


@pytest.mark.parametrize("text, what", [
    ("hello world\nnot a path\n", "a text file whose lines are not paths of audio files"),
    ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\n1\tSpectrogram 1\t1\t0\t5\n",
     "a Raven selection table"),
    ("0.000\t5.000\tsp00 0.900\n", "an Audacity label track"),
    ("# nothing listed\n\n", "empty"),
    ("a.wav\nnotes.md\n", "a text file whose lines are not paths of audio files"),
])
def test_a_txt_input_is_a_list_only_when_its_lines_name_audio_files(tmp_path, text, what):
    (tmp_path / "input.txt").write_text(text)
    with pytest.raises(ValueError, match="list of recordings only when each line names an "
                                         "audio file") as error:
        analyze.collect_recordings([tmp_path / "input.txt"])
    assert f"this one is {what}" in str(error.value)


# --- With a model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model_dir(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze_exports")
    return exporter.export_run(trained_run, exports_dir=out, model_name="birds").saved_model_dir


def read_outputs(out_dir, name):
    stem = out_dir / name
    csv = pd.read_csv(stem.with_name(stem.name + ".csv"))
    raven = pd.read_csv(stem.with_name(stem.name + ".selection.table.txt"), sep="\t")
    audacity = pd.read_csv(stem.with_name(stem.name + ".audacity.txt"), sep="\t", header=None,
                           names=["start_s", "end_s", "text"])
    return csv, raven, audacity


def assert_rows_cover(starts, ends, duration_s, window_s):
    starts, ends = np.sort(np.asarray(starts)), np.sort(np.asarray(ends))
    assert starts[0] == 0 and abs(ends[-1] - duration_s) < 0.01
    assert np.all(starts[1:] <= ends[:-1] + 1e-3)  # no gaps
    assert np.all(ends - starts <= window_s + 1e-3)


def test_resume_skips_finished_files_and_bad_files_go_to_the_error_log(saved_model_dir,
                                                                       tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", tone(7.0, 16000), 16000)
    soundfile.write(audio / "b.flac", tone(3.0, 48000, 3000.0, channels=2), 48000)
    (audio / "broken.wav").write_text("not audio")
    cfg = AnalyzeConfig(min_conf=0.0, top_n=1, formats=("csv", "json"),
                        out_dir=str(tmp_path / "out"))

    first = analyze.analyze([audio], saved_model_dir, cfg, progress=False)
    assert (first.analysed, first.skipped, first.failed) == (2, 0, 1)
    assert first.audio_s == pytest.approx(10.0, abs=0.01) and first.realtime_factor > 0
    errors = pd.read_csv(first.errors_path)
    assert errors["file"].tolist() == [str(audio / "broken.wav")]
    assert errors["reason"].str.startswith("unreadable").all()
    combined = pd.read_csv(first.combined_csv)
    assert combined.groupby("file").size().to_dict() == {str(audio / "a.wav"): 2,
                                                         str(audio / "b.flac"): 1}
    csv_a = tmp_path / "out" / "a.wav.csv"
    written = csv_a.stat().st_mtime_ns

    second = analyze.analyze([audio], saved_model_dir, cfg, progress=False)
    assert (second.analysed, second.skipped, second.failed) == (0, 2, 1)
    assert csv_a.stat().st_mtime_ns == written
    assert len(pd.read_csv(second.combined_csv)) == 3

    os.utime(csv_a, (time.time() - 1e6, time.time() - 1e6))  # older than the model: redo
    third = analyze.analyze([audio], saved_model_dir, cfg, progress=False)
    assert (third.analysed, third.skipped) == (1, 1)


def test_birdnet_tables_and_combined_tables_with_the_data_set_names(saved_model_dir, tmp_path):
    species = pd.read_csv(saved_model_dir / "assets" / "species.csv")
    assert species.values.tolist() == [["sp00", "Avis synthetica 00", "Synthetic bird 00"],
                                       ["sp01", "Avis synthetica 01", "Synthetic bird 01"]]
    audio = tmp_path / "site"
    audio.mkdir()
    soundfile.write(audio / "a.wav", tone(7.0, 16000), 16000)
    soundfile.write(audio / "b.wav", tone(6.0, 32000), 32000)
    (audio / "broken.wav").write_text("not audio")
    formats = ("raven", "birdnet_csv", "kaleidoscope")
    cfg = AnalyzeConfig(min_conf=0.0, top_n=1, overlap_s=1.0, formats=formats, combine=True,
                        out_dir=str(tmp_path / "out"))
    summary = analyze.analyze([audio], saved_model_dir, cfg, progress=False)
    assert (summary.analysed, summary.failed) == (2, 1)
    raven_a = pd.read_csv(tmp_path / "out" / "a.wav.selection.table.txt", sep="\t")
    assert set(raven_a["Common Name"]) <= {"Synthetic bird 00", "Synthetic bird 01"}
    assert set(raven_a["High Freq (Hz)"]) == {8000.0}  # a.wav's Nyquist, below the model's 16 kHz
    combined = pd.read_csv(tmp_path / "out" / "combined.selection.table.txt", sep="\t")
    assert list(combined.columns) == detections.RAVEN_COLUMNS
    assert combined["Selection"].tolist() == list(range(1, len(combined) + 1))
    assert combined["Begin Path"].tolist() == [str(audio / "a.wav")] * 2 + [str(audio / "b.wav")] * 2
    # b.wav's selections follow a.wav's 7 s in the sequence; File Offset stays in b.wav.
    assert combined["Begin Time (s)"].tolist() == [0.0, 2.0, 7.0, 8.0]
    assert combined["File Offset (s)"].tolist() == [0.0, 2.0, 0.0, 1.0]
    assert combined["High Freq (Hz)"].tolist() == [8000.0, 8000.0, 16000.0, 16000.0]
    # What BirdNET's segments command cuts: Begin Path from File Offset for the box length.
    lengths = combined["End Time (s)"] - combined["Begin Time (s)"]
    durations = combined["Begin Path"].map(lambda p: soundfile.info(p).duration)
    assert (combined["File Offset (s)"] + lengths <= durations + 1e-3).all()
    birdnet = pd.read_csv(tmp_path / "out" / "combined.birdnet.csv")
    assert list(birdnet.columns) == detections.BIRDNET_CSV_COLUMNS and len(birdnet) == 4
    kaleidoscope = pd.read_csv(tmp_path / "out" / "combined.kaleidoscope.csv")
    assert kaleidoscope["IN FILE"].tolist() == ["a.wav", "a.wav", "b.wav", "b.wav"]
    assert set(kaleidoscope["FOLDER"]) == {"site"} and set(kaleidoscope["overlap"]) == {1.0}
    assert not (tmp_path / "out" / "detections.csv").exists()  # csv not asked for


def test_analysis_outputs_agree_with_the_saved_model(saved_model_dir, tmp_path):
    sample_rate_hz = 32000
    waveform = np.random.default_rng(0).normal(scale=0.1, size=12 * sample_rate_hz)
    soundfile.write(tmp_path / "noise.wav", waveform.astype(np.float32), sample_rate_hz,
                    subtype="FLOAT")
    cfg = AnalyzeConfig(min_conf=0.0, overlap_s=1.0, batch_size=3,
                        out_dir=str(tmp_path / "out"))
    analyze.analyze([tmp_path / "noise.wav"], saved_model_dir, cfg, progress=False)
    rows = pd.read_csv(tmp_path / "out" / "noise.wav.csv")
    starts = window_starts(len(waveform), 160000, 128000)
    assert starts.tolist() == [0, 128000, 224000]
    windows = np.stack([waveform[s:s + 160000] for s in starts]).astype(np.float32)
    expected = exporter.run_saved_model(saved_model_dir, windows)
    got = rows.pivot(index="start_s", columns="label", values="confidence")
    np.testing.assert_allclose(got.index, starts / sample_rate_hz)
    np.testing.assert_allclose(got[["sp00", "sp01"]].to_numpy(), expected, atol=1e-4)


def test_analyze_cli_with_the_run_folder_and_a_species_list(trained_run, tmp_path, capsys):
    soundfile.write(tmp_path / "call.wav", tone(6.0, 22050), 22050)
    (tmp_path / "species.txt").write_text("sp01\n")
    assert cli.main(["analyze", str(tmp_path / "call.wav"), "--model", str(trained_run),
                     "--out", str(tmp_path / "out"), "--min-conf", "0", "--species-list",
                     str(tmp_path / "species.txt"), "--format", "csv", "audacity",
                     "--quiet"]) == 0
    assert "Analysed 1 recording(s)" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "out" / "call.wav.csv")
    assert rows["label"].tolist() == ["sp01", "sp01"]
    assert rows[["start_s", "end_s"]].values.tolist() == [[0.0, 5.0], [1.0, 6.0]]
    (tmp_path / "thresholds.csv").write_text("label,threshold\nsp00,0.0\nsp01,1.0\n")
    assert cli.main(["analyze", str(tmp_path / "call.wav"), "--model", str(trained_run),
                     "--out", str(tmp_path / "tuned"), "--min-conf", "0", "--thresholds",
                     str(tmp_path / "thresholds.csv"), "--quiet"]) == 0
    assert pd.read_csv(tmp_path / "tuned" / "call.wav.csv")["label"].tolist() == ["sp00", "sp00"]
    (tmp_path / "bad.txt").write_text("owl\n")
    assert cli.main(["analyze", str(tmp_path / "call.wav"), "--model", str(trained_run),
                     "--species-list", str(tmp_path / "bad.txt"), "--quiet"]) == 2
    assert "unknown=['owl']" in capsys.readouterr().err


def test_analyze_exit_status_0_all_good_1_some_failed_2_usage(trained_run, tmp_path, capsys):
    soundfile.write(tmp_path / "call.wav", tone(6.0, 22050), 22050)
    (tmp_path / "broken.wav").write_text("not audio")
    (tmp_path / "junk.txt").write_text("hello\n")
    analyze_command = ["analyze", "--model", str(trained_run), "--out", str(tmp_path / "out"),
                       "--quiet"]
    assert cli.main([*analyze_command, str(tmp_path / "call.wav")]) == 0
    assert "0 failed" in capsys.readouterr().out
    assert cli.main([*analyze_command, str(tmp_path / "broken.wav")]) == 1
    assert "1 failed (see" in capsys.readouterr().out
    assert cli.main([*analyze_command, str(tmp_path / "broken.wav"),
                     str(tmp_path / "call.wav")]) == 1
    assert cli.main([*analyze_command, str(tmp_path / "junk.txt")]) == 2
    assert "this one is a text file whose lines are not paths" in capsys.readouterr().err


SOUNDSCAPE = next((r for r in shared_recordings() if r["local_file"] == "birdnet/soundscape.flac"),
                  None)


@requires_shared_audio
@pytest.mark.skipif(SOUNDSCAPE is None, reason="birdnet/soundscape.flac not in MANIFEST.csv")
def test_two_minute_real_recording_gives_outputs_covering_the_file(saved_model_dir, tmp_path):
    cfg = AnalyzeConfig(overlap_s=2.5, min_conf=0.0, top_n=1, batch_size=8,
                        formats=("csv", "raven", "audacity"), block_s=7.0,
                        out_dir=str(tmp_path / "out"))
    summary = analyze.analyze([SOUNDSCAPE["path"]], saved_model_dir, cfg, progress=False)
    duration_s = float(SOUNDSCAPE["duration_s"])
    assert summary.analysed == 1 and summary.audio_s == pytest.approx(duration_s, abs=0.01)
    csv, raven, audacity = read_outputs(tmp_path / "out", "soundscape.flac")
    num_windows = len(window_starts(int(duration_s * 32000), 160000, 80000))
    assert num_windows == 47
    assert len(csv) == len(raven) == len(audacity) == num_windows
    assert list(csv.columns) == detections.COLUMNS
    assert list(raven.columns) == detections.RAVEN_COLUMNS
    assert raven["Selection"].tolist() == list(range(1, num_windows + 1))
    assert set(csv["label"]) <= {"sp00", "sp01"}
    assert csv["confidence"].between(0, 1).all()
    np.testing.assert_allclose(raven["Begin Time (s)"], csv["start_s"], atol=1e-3)
    np.testing.assert_allclose(audacity["end_s"], csv["end_s"], atol=1e-3)
    assert_rows_cover(csv["start_s"], csv["end_s"], duration_s, 5.0)


def test_jobs_run_in_spawned_worker_processes(saved_model_dir, tmp_path):
    for i in range(2):
        soundfile.write(tmp_path / f"r{i}.wav", tone(5.0, 32000, 1000.0 + 2000 * i), 32000)
    serial = AnalyzeConfig(min_conf=0.0, out_dir=str(tmp_path / "serial"))
    parallel = AnalyzeConfig(min_conf=0.0, jobs=2, out_dir=str(tmp_path / "parallel"))
    analyze.analyze([tmp_path], saved_model_dir, serial, progress=False)
    summary = analyze.analyze([tmp_path], saved_model_dir, parallel, progress=False)
    assert (summary.analysed, summary.failed) == (2, 0)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "parallel" / "detections.csv"),
                                  pd.read_csv(tmp_path / "serial" / "detections.csv"),
                                  atol=1e-4)


def test_worker_threads_share_the_cores_unless_given(monkeypatch):
    monkeypatch.setattr(analyze.os, "cpu_count", lambda: 8)
    assert analyze.threads_per_worker(AnalyzeConfig(jobs=3), 3) == 2
    assert analyze.threads_per_worker(AnalyzeConfig(jobs=16), 16) == 1
    assert analyze.threads_per_worker(AnalyzeConfig(jobs=2, threads_per_job=3), 2) == 3
    with pytest.raises(ValueError, match="threads_per_job"):
        AnalyzeConfig(threads_per_job=-1).validate()


def test_tflite_interpreter_uses_every_core_unless_limited(monkeypatch):
    from ai_edge_litert import interpreter

    asked = []

    class FakeInterpreter:  # Records the thread count; TFLite's own default is one thread.
        def __init__(self, model_path, num_threads):
            asked.append(num_threads)

        def get_signature_runner(self, name):
            return FakeRunner()

    class FakeRunner:
        def get_input_details(self):
            return {"waveform": {}}

    monkeypatch.setattr(interpreter, "Interpreter", FakeInterpreter)
    monkeypatch.setattr(analyze.os, "cpu_count", lambda: 6)
    info = analyze.ModelInfo(analyze.Path("m.tflite"), "tflite", ("a",), 32000, 160000,
                             (0.0, 16000.0), modified_time=0.0)
    analyze.load_predictor.__wrapped__(info)
    analyze.load_predictor.__wrapped__(info, 1)
    assert asked == [6, 1]


def test_dask_local_cluster_gives_the_same_outputs_as_one_job(saved_model_dir, tmp_path):
    for i in range(3):
        soundfile.write(tmp_path / f"r{i}.wav", tone(5.0 + i, 32000, 1000.0 + 2000 * i), 32000)
    (tmp_path / "broken.wav").write_text("not audio")
    serial = AnalyzeConfig(min_conf=0.0, out_dir=str(tmp_path / "serial"))
    dask = AnalyzeConfig(min_conf=0.0, dask_local=2, out_dir=str(tmp_path / "dask"))
    analyze.analyze([tmp_path], saved_model_dir, serial, progress=False)
    summary = analyze.analyze([tmp_path], saved_model_dir, dask, progress=False)
    assert (summary.analysed, summary.skipped, summary.failed) == (3, 0, 1)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "dask" / "detections.csv"),
                                  pd.read_csv(tmp_path / "serial" / "detections.csv"),
                                  atol=1e-4)
    errors = pd.read_csv(summary.errors_path)
    assert errors["file"].tolist() == [str(tmp_path / "broken.wav")]
    again = analyze.analyze([tmp_path], saved_model_dir, dask, progress=False)
    assert (again.analysed, again.skipped, again.failed) == (0, 3, 1)  # resumed


def test_dask_options_need_the_extra_and_exclude_jobs(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'tfbird\[dask\]'"):
        analyze.import_distributed()
    with pytest.raises(ValueError, match="Give one of"):
        AnalyzeConfig(jobs=2, dask_local=2).validate()
    with pytest.raises(ValueError, match="Give one of"):
        AnalyzeConfig(dask_scheduler="tcp://host:8786", dask_local=2).validate()


def test_model_info_reads_the_padding_rule_of_the_export(tmp_path):
    from tfbird import config as config_lib
    from tfbird import exporter

    cfg = config_lib.Config(audio=config_lib.AudioConfig(pad_mode="repeat"))
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / artifacts.LABELS_ASSET).write_text("sp00\nsp01\n")
    (assets / artifacts.CONTRACT_ASSET).write_text(
        json.dumps({**artifacts.model_contract(cfg, ["sp00", "sp01"]), "window_samples": 160000}))
    info = analyze.info_from_assets(tmp_path, "saved_model", assets)
    assert (info.pad_mode, info.window_samples) == ("repeat", 160000)
