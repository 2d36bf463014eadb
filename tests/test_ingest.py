"""Ingest: window counts follow durations, targets are the recording's labels, failures are
reported and counted, never dropped silently."""

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf
from conftest import cut_windows, requires_shared_audio, shared_recordings, tiny_config

from tfbird import config, ingest, pipeline, records
from tfbird.waveform import load_waveform

SR = 32000


def expected_windows(num_samples: int, audio: config.AudioConfig) -> int:
    starts = range(0, max(num_samples, 1), audio.hop_samples)
    return sum(1 for i, s in enumerate(starts)
               if i == 0 or min(num_samples - s, audio.window_samples) / audio.window_samples
               >= audio.min_window_fraction)


def resampled_length(path) -> int:
    """Decoded length at 32 kHz (soundfile.info's frame count is an estimate for MP3)."""
    return len(load_waveform(path, SR))


def read_examples(records_dir, manifest, split):
    examples = []
    for shard in manifest["splits"][split]["shards"]:
        for serialized in tf.data.TFRecordDataset(str(records_dir / shard["file"])):
            examples.append(records.parse_example(serialized, len(manifest["labels"]),
                                                  tuple(manifest["feature"]["shape"])))
    return examples


def test_manifest_and_window_counts(tiny_cfg, tiny_corpus, tiny_records):
    manifest = json.loads((tiny_records / "manifest.json").read_text())
    assert manifest["schema_version"] == records.SCHEMA_VERSION
    assert manifest["feature"] == {"name": "logmel", "dtype": "float16", "shape": [501, 128]}
    assert manifest["frontend"]["n_fft"] == 1024 and manifest["labels"] == ["sp00", "sp01"]
    metadata = pd.read_csv(tiny_corpus / "train_metadata.csv")
    expected = {row.filename: expected_windows(
        resampled_length(tiny_corpus / "train_audio" / row.filename), tiny_cfg.audio)
        for row in metadata.itertuples()}
    seen = {}
    for split in ("train", "valid"):
        examples = read_examples(tiny_records, manifest, split)
        assert len(examples) == manifest["splits"][split]["examples"]
        assert sum(s["examples"] for s in manifest["splits"][split]["shards"]) == len(examples)
        for example in examples:
            name = example[records.FILENAME].numpy().decode()
            seen.setdefault(name, set()).add(split)
    assert sorted(seen) == sorted(expected)
    assert all(len(splits) == 1 for splits in seen.values())  # no recording in both splits
    total = sum(s["examples"] for s in manifest["splits"].values())
    assert total == sum(expected.values())
    assert manifest["failures"]["count"] == 0


def test_targets_are_primary_plus_secondary_labels(tiny_corpus, tiny_records):
    manifest = json.loads((tiny_records / "manifest.json").read_text())
    labels = manifest["labels"]
    metadata = pd.read_csv(tiny_corpus / "train_metadata.csv")
    wanted = {row.filename: {row.primary_label, *ast.literal_eval(row.secondary_labels)}
              for row in metadata.itertuples()}
    assert any(len(v) == 2 for v in wanted.values()), "fixture should have a secondary label"
    for split in ("train", "valid"):
        counts = np.zeros(len(labels))
        for example in read_examples(tiny_records, manifest, split):
            name = example[records.FILENAME].numpy().decode()
            target = example[records.LABELS].numpy()
            assert {labels[i] for i in np.flatnonzero(target)} == wanted[name]
            counts += target
        assert manifest["splits"][split]["class_counts"] == dict(zip(labels, counts.tolist()))


def test_logmels_in_records_equal_the_frontend_on_the_window(tiny_cfg, tiny_corpus, tiny_records):
    from tfbird.frontend import build_frontend
    from tfbird.waveform import load_waveform

    manifest = json.loads((tiny_records / "manifest.json").read_text())
    example = read_examples(tiny_records, manifest, "train")[1]
    path = tiny_corpus / "train_audio" / example[records.FILENAME].numpy().decode()
    windows, starts = cut_windows(load_waveform(path, SR), tiny_cfg.audio)
    index = int(np.argmin(np.abs(starts.numpy() - example[records.START_S].numpy())))
    expected = build_frontend(tiny_cfg.audio, tiny_cfg.frontend)(windows[index:index + 1])[0]
    np.testing.assert_allclose(example[records.LOGMEL].numpy(), expected.numpy(), atol=0.07)


def write_wav(path, seconds, sr=22050):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    soundfile.write(path, 0.2 * np.sin(2 * np.pi * 1000 * t), sr)


def test_bad_files_are_reported_counted_and_skipped(tmp_path):
    data = tmp_path / "data"
    write_wav(data / "a1.wav", 8.0)
    write_wav(data / "b1.wav", 3.0)
    write_wav(data / "a2.wav", 2.0)
    (data / "broken.ogg").write_bytes(b"OggS" + b"\x00" * 200)
    (data / "list.csv").write_text(
        "filename,label\na1.wav,a\nb1.wav,b\nbroken.ogg,a\nmissing.wav,b\na2.wav,a\n")
    cfg = tiny_config(tmp_path, data={"max_failures": 0.5, "validation_fraction": 0.2})
    manifest = ingest.ingest(cfg, data / "list.csv", tmp_path / "records", progress=False)
    assert manifest["failures"]["count"] == 2
    with (tmp_path / "records" / "failures.csv").open() as stream:
        failures = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(stream)}
    assert set(failures) == {"broken.ogg", "missing.wav"}
    assert failures["missing.wav"].startswith("file missing")
    assert failures["broken.ogg"].startswith("unreadable")
    total = sum(s["examples"] for s in manifest["splits"].values())
    assert total == 2 + 1 + 1  # 8 s -> 2 windows (3-s tail kept), 3 s -> 1, 2 s -> 1


def test_too_many_failures_stop_the_run_after_writing_the_report(tmp_path):
    data = tmp_path / "data"
    write_wav(data / "a.wav", 1.0)
    (data / "list.csv").write_text("filename,label\na.wav,a\nmissing.wav,a\n")
    cfg = tiny_config(tmp_path, data={"max_failures": 0})
    with pytest.raises(ValueError, match="1 of 2 files failed.*failures.csv"):
        ingest.ingest(cfg, data / "list.csv", tmp_path / "records", progress=False)
    assert "missing.wav" in (tmp_path / "records" / "failures.csv").read_text()


def test_records_match_only_for_the_same_settings(tiny_cfg, tiny_records):
    assert pipeline.records_match(tiny_records, tiny_cfg)
    other = config.from_dict({**config.to_dict(tiny_cfg),
                              "frontend": {"n_mels": 64}}).validate()
    assert not pipeline.records_match(tiny_records, other)


@requires_shared_audio
def test_all_real_recordings_ingest_with_window_counts_from_their_durations(tmp_path):
    rows = shared_recordings()
    root = rows[0]["path"].rsplit("/", 2)[0]
    csv_path = tmp_path / "shared.csv"
    # Filenames must lie inside the CSV's folder: link the shared folder there.
    (tmp_path / "audio").symlink_to(root)
    csv_path.write_text("\n".join(
        ["filename,label"] + [f"audio/{r['local_file']},{r['local_file'].split('/')[0]}"
                              for r in rows]) + "\n")
    cfg = tiny_config(tmp_path, data={"max_failures": 0, "files_per_shard": 8})
    manifest = ingest.ingest(cfg, csv_path, tmp_path / "records", progress=False)
    assert manifest["failures"]["count"] == 0
    expected = sum(expected_windows(resampled_length(r["path"]), cfg.audio) for r in rows)
    assert sum(s["examples"] for s in manifest["splits"].values()) == expected


def test_records_mark_the_secondary_labels_and_readers_weight_them(tiny_corpus, tiny_records):
    from tfbird import dataset

    manifest = json.loads((tiny_records / "manifest.json").read_text())
    labels = manifest["labels"]
    metadata = pd.read_csv(tiny_corpus / "train_metadata.csv")
    secondary = {row.filename: set(ast.literal_eval(row.secondary_labels)) - {row.primary_label}
                 for row in metadata.itertuples()}
    primary = {row.filename: row.primary_label for row in metadata.itertuples()}
    examples = read_examples(tiny_records, manifest, "train") + read_examples(
        tiny_records, manifest, "valid")
    assert any(secondary[e[records.FILENAME].numpy().decode()] for e in examples)
    for example in examples:
        name = example[records.FILENAME].numpy().decode()
        marked = example[records.SECONDARY].numpy()
        assert {labels[i] for i in np.flatnonzero(marked)} == secondary[name]
        weighted = dataset.read_targets(example[records.LABELS], marked, "multilabel", 0.3)
        expected = [1.0 if label == primary[name] else 0.3 if label in secondary[name] else 0.0
                    for label in labels]
        np.testing.assert_allclose(weighted.numpy(), expected, rtol=1e-6)
        one_hot = dataset.read_targets(example[records.LABELS], marked, "multiclass")
        np.testing.assert_array_equal(one_hot.numpy(),
                                      [float(label == primary[name]) for label in labels])


def page_faults_of_large_allocations(count: int = 40, num_bytes: int = 4 * 2**20) -> int:
    """Minor page faults while allocating, touching and freeing ``count`` arrays."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        np.ones(num_bytes // 8)  # Allocated, written and freed at once.
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not __import__("ctypes.util").util.find_library("c"), reason="needs glibc")
def test_ingest_undoes_tensorflows_generator_malloc_setting():
    """In a fresh process: other tests (TensorFlow, oneDNN) change the allocator's state."""
    import subprocess
    import sys

    code = (
        "import ctypes, ctypes.util, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_ingest import page_faults_of_large_allocations as faults\n"
        "from tfbird import ingest\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.mallopt(ingest.M_MMAP_THRESHOLD, 128 * 1024)\n"
        "libc.mallopt(ingest.M_TRIM_THRESHOLD, 128 * 1024)\n"
        "faults(2); patched = faults()\n"
        "assert ingest.restore_malloc_thresholds()\n"
        "faults(2); print(patched, faults())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    patched, restored = map(int, done.stdout.split()[-2:])
    assert patched > 40 * 500  # About 1,024 pages per 4-MB array under the patch.
    assert restored < patched / 20


def test_random_selection_reports_a_broken_file_as_a_failure(tmp_path):
    data = tmp_path / "data"
    write_wav(data / "a1.wav", 12.0)
    (data / "broken.wav").write_bytes(b"RIFF" + b"\x00" * 100)
    (data / "list.csv").write_text("filename,label\na1.wav,a\nbroken.wav,a\n")
    cfg = tiny_config(tmp_path, data={"max_failures": 1, "window_selection": "random",
                                      "windows_per_recording": 2})
    manifest = ingest.ingest(cfg, data / "list.csv", tmp_path / "records", progress=False)
    assert manifest["failures"]["count"] == 1
    assert sum(s["examples"] for s in manifest["splits"].values()) == 2
