"""The log-mel layer matches librosa, serialises, and gives the same result in tf.data."""

import keras
import librosa
import numpy as np
import pytest
import tensorflow as tf
from conftest import requires_shared_audio, shared_recordings

from tfbird.config import AudioConfig, FrontendConfig
from tfbird.frontend import LogMelSpectrogram, build_frontend
from tfbird.waveform import load_waveform

SR = 32000


def librosa_log_mel(y: np.ndarray, sr: int = SR, n_fft=1024, hop_length=320, n_mels=128,
                    fmin=20.0, fmax=16000.0, top_db=80.0) -> np.ndarray:
    """The reference: librosa's mel spectrogram (centred, Slaney) in dB, as [frames, mels]."""
    power = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop_length,
                                           n_mels=n_mels, fmin=fmin, fmax=fmax, power=2.0)
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=top_db).T


def tone(seconds=1.0, sr=SR, hz=440.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_matches_librosa_on_a_tone_with_default_parameters():
    y = tone(seconds=1.0)
    ours = LogMelSpectrogram()(y[None])[0].numpy()
    ref = librosa_log_mel(y)
    assert ours.shape == ref.shape == (101, 128)
    assert np.abs(ours - ref).max() < 0.05


def test_matches_librosa_with_other_parameters():
    y = tone(seconds=0.5, sr=16000, hz=1000.0)
    layer = LogMelSpectrogram(sample_rate_hz=16000, n_fft=512, hop_length=160, n_mels=40,
                              fmin_hz=50.0, fmax_hz=8000.0, top_db=None)
    ours = layer(y[None])[0].numpy()
    ref = librosa_log_mel(y, sr=16000, n_fft=512, hop_length=160, n_mels=40, fmin=50.0,
                          fmax=8000.0, top_db=None)
    assert ours.shape == ref.shape == (51, 40)
    assert np.abs(ours - ref).max() < 0.05


@requires_shared_audio
@pytest.mark.parametrize("row", shared_recordings(), ids=lambda row: row["local_file"])
def test_matches_librosa_on_real_recordings(row):
    """Whole recording, decoded by tfbird, against librosa.load + melspectrogram: < 0.05 dB."""
    y = load_waveform(row["path"], SR)
    y_ref, _ = librosa.load(row["path"], sr=SR, mono=True)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    ours = LogMelSpectrogram()(y[None])[0].numpy()
    ref = librosa_log_mel(y_ref)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 0.05


def test_top_db_is_per_example():
    loud, quiet = tone(0.5), 0.001 * tone(0.5, seed=1)
    batch = LogMelSpectrogram()(np.stack([loud, quiet]))
    for example, y in zip(batch.numpy(), [loud, quiet]):
        np.testing.assert_allclose(example, librosa_log_mel(y), atol=0.05)


def test_batched_equals_single_and_tf_data_map():
    layer = LogMelSpectrogram()
    waves = np.stack([tone(0.5, seed=i, hz=300.0 * (i + 1)) for i in range(3)])
    batched = layer(waves).numpy()
    singles = np.stack([layer(w[None])[0].numpy() for w in waves])
    np.testing.assert_allclose(batched, singles, atol=1e-4)
    mapped = np.stack(list(tf.data.Dataset.from_tensor_slices(waves).map(layer)
                           .as_numpy_iterator()))
    np.testing.assert_allclose(mapped, batched, atol=1e-4)
    batch_mapped = next(tf.data.Dataset.from_tensor_slices(waves).batch(3).map(layer)
                        .as_numpy_iterator())
    np.testing.assert_allclose(batch_mapped, batched, atol=1e-4)


def test_serialization_round_trip():
    layer = build_frontend(AudioConfig(), FrontendConfig(n_mels=64, top_db=None))
    config = layer.get_config()
    restored = LogMelSpectrogram.from_config(config)
    assert restored.get_config() == config
    assert config["n_mels"] == 64 and config["top_db"] is None
    model = keras.Sequential([keras.Input((8000,)), layer])
    assert model.output_shape == (None, 26, 64)


def test_saved_in_a_keras_file(tmp_path):
    model = keras.Sequential([keras.Input((SR,)), LogMelSpectrogram()])
    model.save(tmp_path / "frontend.keras")
    restored = keras.models.load_model(tmp_path / "frontend.keras")
    y = tone(1.0)[None]
    np.testing.assert_allclose(restored(y).numpy(), model(y).numpy(), atol=1e-5)
