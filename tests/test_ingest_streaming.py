"""Ingest streams long recordings in blocks: the same windows, start times, log-mels and
targets as decoding them whole; a recording failing mid-stream leaves nothing in its shard."""

import typing

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from conftest import cut_windows, tiny_config

from tfbird import ingest, records
from tfbird.frontend import build_frontend
from tfbird.waveform import (
    load_waveform,
    stream_cut_windows,
    stream_waveform,
)

SR = 32000


def write_chirp(path, seconds, sr, channels=1):
    """A slow chirp with a little noise: every window differs from its neighbours."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(int(seconds * 10))
    mono = 0.3 * np.sin(2 * np.pi * (300 + 40 * t) * t) + 0.01 * rng.standard_normal(len(t))
    soundfile.write(path, np.stack([mono] * channels, 1) if channels > 1 else mono, sr)
    return path


def ingest_folder(tmp_path, name, folder, **data):
    cfg = tiny_config(tmp_path, data={"layout": "folders", "validation_fraction": 0.5,
                                      "files_per_shard": 4, "max_failures": 1.0, **data},
                      audio={"hop_s": 2.5, "pad_mode": "repeat", "min_window_fraction": 0.3})
    manifest = ingest.ingest(cfg, folder, tmp_path / name, progress=False)
    return cfg, manifest


def read_windows(records_dir, manifest):
    """``{(filename, start_s): (feature, labels)}`` of every record."""
    store = manifest["store"]
    shape = manifest["feature"]["shape"]
    found = {}
    for split in ("train", "valid"):
        for shard in manifest["splits"][split]["shards"]:
            for serialized in tf.data.TFRecordDataset(str(records_dir / shard["file"])):
                example = records.parse_example(serialized, len(manifest["labels"]), shape,
                                                store)
                key = (example[records.FILENAME].numpy().decode(),
                       float(example[records.START_S]))
                found[key] = (example[store].numpy(), example[records.LABELS].numpy())
    return found


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """Two classes; a 2-min 44.1-kHz stereo FLAC, a 97-s 32-kHz WAV and short clips."""
    root = tmp_path_factory.mktemp("long")
    for label in ("a", "b"):
        (root / label).mkdir()
    write_chirp(root / "a" / "long.flac", 120.4, 44100, channels=2)
    write_chirp(root / "b" / "long32k.wav", 97.1, SR)
    write_chirp(root / "a" / "short.wav", 3.2, 22050)
    write_chirp(root / "b" / "tiny.wav", 0.4, 16000)
    return root


@pytest.mark.parametrize("store", ["logmel", "pcm"])
def test_streamed_ingest_equals_whole_file_ingest(tmp_path, long_corpus, store):
    _, whole = ingest_folder(tmp_path, "whole", long_corpus, store=store, decode_block_s=600.0)
    _, streamed = ingest_folder(tmp_path, "streamed", long_corpus, store=store,
                                decode_block_s=7.3)
    expected = read_windows(tmp_path / "whole", whole)
    found = read_windows(tmp_path / "streamed", streamed)
    assert sorted(found) == sorted(expected)  # same windows: files and start times
    # 2.5-s hop, 5-s windows, tails kept down to 30% real audio (1.5 s).
    assert sum(1 for name, _ in found if name == "a/long.flac") == 48
    assert sum(1 for name, _ in found if name == "b/long32k.wav") == 39
    tolerance = 0.07 if store == "logmel" else 3 / 32768  # float16 rounding; resampler
    for key, (feature, labels) in expected.items():
        np.testing.assert_array_equal(found[key][1], labels)
        if key[0] == "a/long.flac":  # resampled: block-wise soxr differs by < 1e-4
            np.testing.assert_allclose(found[key][0], feature, atol=tolerance)
        else:  # no resampling, or short enough to be decoded whole: bit for bit
            np.testing.assert_array_equal(found[key][0], feature)
    assert streamed["splits"]["train"]["class_counts"] == whole["splits"]["train"]["class_counts"]


def test_streamed_windows_give_the_whole_file_logmels_in_float32(long_corpus):
    cfg = tiny_config(long_corpus, audio={"pad_mode": "repeat", "min_window_fraction": 0.3})
    path = long_corpus / "a" / "long.flac"
    whole, whole_s = cut_windows(load_waveform(path, SR), cfg.audio)
    parts = list(stream_cut_windows(stream_waveform(path, SR, block_s=7.3), cfg.audio))
    np.testing.assert_array_equal(np.concatenate([s for _, s in parts]), whole_s.numpy())
    frontend = build_frontend(cfg.audio, cfg.frontend)
    streamed = frontend(np.concatenate([w for w, _ in parts])).numpy()
    difference = np.abs(streamed - frontend(whole).numpy())
    assert difference.max() < 2e-3 and np.median(difference) < 1e-4  # dB


@pytest.mark.parametrize("selection", ["first", "random"])
def test_window_selection_of_streamed_recordings_equals_whole(tmp_path, long_corpus, selection):
    data = {"window_selection": selection, "windows_per_recording": 3, "seed": 4}
    _, whole = ingest_folder(tmp_path, "whole", long_corpus, decode_block_s=600.0, **data)
    _, streamed = ingest_folder(tmp_path, "streamed", long_corpus, decode_block_s=7.3, **data)
    found = sorted(read_windows(tmp_path / "streamed", streamed))
    assert found == sorted(read_windows(tmp_path / "whole", whole))
    starts = [start for name, start in found if name == "a/long.flac"]
    assert len(starts) == 3
    if selection == "first":
        assert starts == [0.0, 2.5, 5.0]
    else:
        assert starts != [0.0, 2.5, 5.0] and max(starts) <= 117.5


def test_recording_failing_mid_stream_leaves_nothing_in_its_shard(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    write_chirp(root / "a" / "good.wav", 60.0, SR)
    audio = soundfile.read(write_chirp(root / "a" / "bad.wav", 60.0, SR))[0]
    audio[SR * 50] = np.nan  # found after 10 blocks of 5 s
    soundfile.write(root / "a" / "bad.wav", audio.astype(np.float32), SR, subtype="FLOAT")
    # Tiny in-memory budget: the long recordings' windows go through spill files.
    monkeypatch.setattr(ingest, "PENDING_MEMORY_BYTES", 200_000)
    _, manifest = ingest_folder(tmp_path, "records", root, decode_block_s=5.0,
                                  validation_fraction=0.1)
    failures = (tmp_path / "records" / "failures.csv").read_text()
    assert "a/bad.wav,non-finite,non-finite: 1 of 1920000 samples are NaN or inf" in failures
    found = read_windows(tmp_path / "records", manifest)
    assert {name for name, _ in found} == {"a/good.wav"}
    assert len(found) == manifest["ingested"]["windows"] == 24  # 60 s, 2.5-s hop
    assert not list((tmp_path / "records").glob("*.tmp"))


def test_pending_examples_spill_keep_their_order_and_discard_leaves_no_file(tmp_path):
    spill = tmp_path / "shard.tfrecord.0.spill.tmp"
    examples = [bytes([i]) * 100 for i in range(10)]
    pending = records.PendingExamples(spill, max_bytes=250)
    for example in examples:
        pending.add(example)
    assert spill.is_file()  # spilled past 250 bytes
    with records.ShardWriter(tmp_path / "shard.tfrecord") as writer:
        pending.commit(writer)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "shard.tfrecord"))] == \
        examples
    assert writer.num_examples == pending.num_examples == 10 and not spill.exists()
    dropped = records.PendingExamples(spill, max_bytes=250)
    for example in examples:
        dropped.add(example)
    dropped.discard()
    assert not spill.exists()


def test_progress_bar_shows_audio_hours_and_windows_per_second(tmp_path, long_corpus, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(ingest, "tqdm", lambda **kwargs: _RecordingBar(**kwargs))
    _RecordingBar.postfixes.clear()
    ingest_folder(tmp_path, "records", long_corpus)
    audio_h, windows_per_s = _RecordingBar.postfixes[-1]
    total_s = sum(len(load_waveform(p, SR)) / SR for p in long_corpus.rglob("*.*"))
    assert audio_h == f"{total_s / 3600:.2f}" and windows_per_s > 0


class _RecordingBar:
    postfixes: typing.ClassVar[list] = []

    def __init__(self, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix(self, audio_h, windows_per_s, refresh=True):
        self.postfixes.append((audio_h, windows_per_s))

    def update(self, n):
        pass
