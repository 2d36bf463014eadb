"""The demo's glue: corpus reuse and the export-check windows."""

import numpy as np
import pytest
import soundfile

from tfbird import pipeline
from tfbird.config import AudioConfig


def test_check_windows_cycles_through_files_and_pads(tmp_path):
    sr = 8000
    audio = AudioConfig(sample_rate_hz=sr, window_s=1.0, hop_s=1.0)
    soundfile.write(tmp_path / "a.wav", np.full(int(2.5 * sr), 0.5), sr)   # 2.5 s
    soundfile.write(tmp_path / "b.wav", np.full(int(0.5 * sr), -0.25), sr)  # 0.5 s
    windows = pipeline.check_windows(tmp_path, audio, count=4)
    # a[0:1 s], b[0:0.5 s] zero-padded, a[1:2 s]; a's 0.5-s tail is not a full window.
    assert windows.shape == (3, sr)
    np.testing.assert_allclose(windows[0], 0.5, atol=1e-4)
    np.testing.assert_allclose(windows[1, : sr // 2], -0.25, atol=1e-4)
    assert np.all(windows[1, sr // 2:] == 0)
    np.testing.assert_allclose(windows[2], 0.5, atol=1e-4)
    assert pipeline.check_windows(tmp_path, audio, count=2).shape == (2, sr)


def test_check_windows_needs_audio(tmp_path):
    with pytest.raises(ValueError, match="No audio files found"):
        pipeline.check_windows(tmp_path, AudioConfig())


def test_existing_synthetic_corpus_is_reused(tmp_path, caplog):
    (tmp_path / "train_metadata.csv").write_text("primary_label\n")
    pipeline.ensure_synthetic_corpus(tmp_path, None, progress=False)
    assert (tmp_path / "train_metadata.csv").read_text() == "primary_label\n"
