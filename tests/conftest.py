"""Shared fixtures: a tiny synthetic corpus, its records, a trained run, and the real recordings.

The CPU is split into 2 logical devices before TensorFlow starts, so MirroredStrategy runs
with 2 replicas in every test, as ``train.py --strategy mirrored`` does on a CPU machine.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

import tfbird  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)
import tensorflow as tf  # noqa: E402

from tfbird import config  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
SHARED_AUDIO_REASON = (f"real recordings not found at {SHARED_AUDIO} (the folder beside the "
                       "checkout that holds shared/audio/MANIFEST.csv)")


def shared_recordings() -> list[dict]:
    """Rows of ``shared/audio/MANIFEST.csv`` with an absolute ``path``; [] when absent."""
    manifest = SHARED_AUDIO / "MANIFEST.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return [dict(row, path=str(SHARED_AUDIO / row["local_file"])) for row in rows]


requires_shared_audio = pytest.mark.skipif(not shared_recordings(), reason=SHARED_AUDIO_REASON)


def tiny_config(tmp_path: Path, **sections) -> config.Config:
    """A config sized for tests: 2 species, short recordings, a 32x32 ResNet input."""
    raw = {
        "data": {"path": str(tmp_path / "corpus"), "records": str(tmp_path / "records"),
                 "validation_fraction": 0.5, "files_per_shard": 2, "synthetic": True},
        "synth": {"num_species": 2, "recordings_per_species": 4, "min_duration_s": 6.0,
                  "max_duration_s": 11.0, "secondary_fraction": 0.34, "seed": 1},
        "model": {"image_size": [32, 32], "dropout": 0.0},
        "train": {"epochs": 1, "global_batch_size": 4, "runs_dir": str(tmp_path / "runs"),
                  "warmup_epochs": 0.0},
        "export": {"exports_dir": str(tmp_path / "exports")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config.from_dict(raw).validate()


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_workspace) -> config.Config:
    return tiny_config(tiny_workspace)


@pytest.fixture(scope="session")
def tiny_corpus(tiny_cfg) -> Path:
    from tfbird import synth

    synth.synthesize_corpus(tiny_cfg.data.path, tiny_cfg.synth, progress=False)
    return Path(tiny_cfg.data.path)


@pytest.fixture(scope="session")
def tiny_records(tiny_cfg, tiny_corpus) -> Path:
    from tfbird import ingest

    ingest.ingest(tiny_cfg, tiny_corpus, tiny_cfg.data.records, progress=False)
    return Path(tiny_cfg.data.records)


@pytest.fixture(scope="session")
def tiny_config_file(tiny_cfg, tiny_workspace) -> Path:
    path = tiny_workspace / "tiny.yaml"
    config.save(tiny_cfg, path)
    return path


@pytest.fixture(scope="session")
def trained_run(tiny_config_file, tiny_records, tiny_workspace) -> Path:
    """``train.py --strategy mirrored`` (2 replicas), one epoch, on the tiny records."""
    from tfbird import cli

    run_dir = tiny_workspace / "runs" / "mirrored"
    status = cli.main(["train", "--config", str(tiny_config_file), "--strategy", "mirrored",
                       "--run-dir", str(run_dir), "--quiet"])
    assert status == 0
    return run_dir


def cut_windows(waveform, audio: config.AudioConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """The training windows of a whole waveform, written out in TensorFlow as the reference
    of ``waveform.stream_windows``' ``"min_fraction"`` rule (these tests' reference).

    Windows of ``audio.window_s`` every ``audio.hop_s``; a window reaching past the end is
    filled by ``audio.pad_mode`` (zeros, or the recording repeated). Tail windows holding
    less than ``audio.min_window_fraction`` of real audio are dropped, but the first window
    is always kept. Returns ``(windows [n, window_samples], start_s [n])``.
    """
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    window, hop = audio.window_samples, audio.hop_samples
    num_samples = tf.shape(waveform)[0]
    starts = tf.range(0, tf.maximum(num_samples, 1), hop)
    real_fraction = tf.cast(tf.minimum(num_samples - starts, window), tf.float32) / window
    keep = tf.logical_or(tf.range(tf.size(starts)) == 0,
                         real_fraction >= audio.min_window_fraction)
    num_windows = tf.reduce_sum(tf.cast(keep, tf.int32))
    needed = (num_windows - 1) * hop + window
    padded = pad_to_length(waveform, needed, audio.pad_mode)
    windows = tf.signal.frame(padded, window, hop)[:num_windows]
    start_s = tf.cast(starts[:num_windows], tf.float32) / audio.sample_rate_hz
    return windows, start_s


def pad_to_length(waveform: tf.Tensor, length: tf.Tensor, pad_mode: str) -> tf.Tensor:
    """Pads (``"zeros"``) or tiles (``"repeat"``) ``waveform`` to at least ``length`` samples."""
    num_samples = tf.shape(waveform)[0]
    if pad_mode == "repeat":
        repeats = (length + num_samples - 1) // tf.maximum(num_samples, 1)
        return tf.tile(waveform, [tf.maximum(repeats, 1)])
    return tf.pad(waveform, [[0, tf.maximum(length - num_samples, 0)]])
