"""Decoding and resampling match librosa.load; windows follow the padding rules; bad files
raise errors that name them."""

import librosa
import numpy as np
import pytest
import soundfile
from conftest import cut_windows, requires_shared_audio, shared_recordings

from tfbird.config import AudioConfig
from tfbird.waveform import (
    AudioDecodeError,
    channel_mean,
    count_samples,
    count_windows,
    decode_error_message,
    fix_length,
    load_waveform,
    stream_cut_windows,
    stream_waveform,
)

SR = 32000


def write_tone(path, seconds, sr, channels=1, subtype=None):
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    audio = np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)
    soundfile.write(path, audio, sr, subtype=subtype)
    return path


@pytest.mark.parametrize("sr, channels, suffix", [
    (16000, 1, "wav"), (22050, 2, "flac"), (44100, 1, "ogg"), (48000, 2, "wav"), (32000, 1, "flac"),
])
def test_decode_resample_downmix_match_librosa(tmp_path, sr, channels, suffix):
    path = write_tone(tmp_path / f"tone.{suffix}", 1.3, sr, channels)
    ours = load_waveform(path, SR)
    ref, _ = librosa.load(path, sr=SR, mono=True)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@requires_shared_audio
def test_real_recordings_have_their_decoded_and_manifest_durations():
    for row in shared_recordings():
        waveform = load_waveform(row["path"], SR)
        # MP3 durations depend on how a decoder treats encoder delay and padding (up to 0.12 s
        # here); soundfile.info's MP3 frame count is only an estimate, so it is not used.
        tolerance_s = 0.15 if row["format"] == "mp3" else 0.01
        assert abs(len(waveform) / SR - float(row["duration_s"])) < tolerance_s, row["local_file"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="file missing: .*nothing.wav"):
        load_waveform(tmp_path / "nothing.wav", SR)
    garbage = tmp_path / "garbage.ogg"
    garbage.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioDecodeError, match="unreadable: .*garbage.ogg"):
        load_waveform(garbage, SR)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1)), SR)
    with pytest.raises(AudioDecodeError, match="no audio after decode: .*empty.wav"):
        load_waveform(empty, SR)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.full(100, np.nan), SR, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="non-finite.*nan.wav"):
        load_waveform(nan, SR)


def test_decode_error_message_names_the_reason():
    assert decode_error_message(AudioDecodeError("empty: x.wav")) == "empty: x.wav"
    assert decode_error_message(RuntimeError("boom")) == "unreadable: RuntimeError: boom"


@pytest.mark.parametrize("sr", [44100, 32000])
def test_streamed_waveform_has_the_whole_file_length_and_samples(tmp_path, sr):
    path = write_tone(tmp_path / "long.flac", 7.3, sr, channels=2)
    blocks = list(stream_waveform(path, SR, block_s=0.7))
    whole = load_waveform(path, SR)
    assert len(blocks) > 5 and sum(map(len, blocks)) == len(whole) == count_samples(path, SR)
    assert np.abs(np.concatenate(blocks) - whole).max() < 1e-4
    # A file no longer than one block is decoded whole, exactly as load_waveform.
    (single,) = stream_waveform(path, SR, block_s=8.0)
    np.testing.assert_array_equal(single, whole)


@pytest.mark.parametrize("values, reason", [(np.nan, "all-NaN"), (0.1, "non-finite")])
def test_streamed_waveform_reports_nan_as_load_waveform(tmp_path, values, reason):
    audio = np.full(SR * 3, values, np.float32)
    audio[SR * 2 + 5] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, audio, SR, subtype="FLOAT")
    with pytest.raises(AudioDecodeError) as whole:
        load_waveform(path, SR)
    with pytest.raises(AudioDecodeError) as streamed:
        list(stream_waveform(path, SR, block_s=0.5))
    assert str(streamed.value) == str(whole.value) and str(whole.value).startswith(reason)


@pytest.mark.parametrize("pad_mode", ["zeros", "repeat"])
@pytest.mark.parametrize("hop_s", [0.5, 1.5, 2.5, 3.0])
@pytest.mark.parametrize("min_window_fraction", [0.0, 0.3, 0.5, 1.0])
def test_stream_cut_windows_equal_cut_windows_for_any_blocks(pad_mode, hop_s,
                                                             min_window_fraction):
    audio = AudioConfig(sample_rate_hz=4, window_s=2.5, hop_s=hop_s, pad_mode=pad_mode,
                        min_window_fraction=min_window_fraction)  # 10-sample windows
    rng = np.random.default_rng(0)
    for num_samples in [1, 3, 9, 10, 11, 14, 23, 40, 41]:
        signal = np.arange(num_samples, dtype=np.float32) + 1
        cuts = np.sort(rng.choice(np.arange(1, num_samples), replace=False,
                                  size=min(3, num_samples - 1)))
        parts = list(stream_cut_windows(np.split(signal, cuts), audio))
        windows, start_s = cut_windows(signal, audio)
        np.testing.assert_array_equal(np.concatenate([w for w, _ in parts]), windows.numpy())
        np.testing.assert_array_equal(np.concatenate([s for _, s in parts]), start_s.numpy())
        assert count_windows(num_samples, audio) == len(start_s)


@pytest.mark.parametrize("seconds, expected_starts", [
    (12.0, [0.0, 5.0]),        # tail 2 s < 50% of a window: dropped
    (13.0, [0.0, 5.0, 10.0]),  # tail 3 s >= 50%: kept, zero-padded
    (10.0, [0.0, 5.0]),
    (0.1, [0.0]),              # a short recording still gives its one window
])
def test_window_counts_and_starts(seconds, expected_starts):
    audio = AudioConfig()
    waveform = np.ones(int(seconds * SR), np.float32)
    windows, starts = cut_windows(waveform, audio)
    assert windows.shape == (len(expected_starts), 160000)
    np.testing.assert_allclose(starts.numpy(), expected_starts)
    real = int(seconds * SR) - int(expected_starts[-1] * SR)
    assert windows.numpy()[-1, :real].min() == 1.0
    assert np.all(windows.numpy()[-1, real:] == 0.0)


def test_overlapping_windows_and_repeat_padding():
    audio = AudioConfig(window_s=1.0, hop_s=0.5, pad_mode="repeat", min_window_fraction=0.0,
                        sample_rate_hz=4)
    waveform = np.arange(6, dtype=np.float32)  # 1.5 s at 4 Hz
    windows, starts = cut_windows(waveform, audio)
    np.testing.assert_allclose(starts.numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(windows.numpy(), [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 0, 1]])


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_channel_mean_is_numpys_mean_bit_for_bit(channels):
    audio = np.random.default_rng(channels).standard_normal((5001, channels)).astype(np.float32)
    audio[::7] = -0.0
    audio[3, 0] = np.float32(3e-39)  # subnormal
    want = audio.mean(axis=1, dtype=np.float32)
    got = channel_mean(audio)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))  # sign of zero too


@pytest.mark.parametrize("num_samples", [0, 3, 10, 14])
def test_fix_length_is_librosas(num_samples):
    waveform = np.arange(1, 11, dtype=np.float32)
    want = librosa.util.fix_length(waveform, size=num_samples)
    got = fix_length(waveform, num_samples)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_stream_windows_docstring_example_and_tail_rules():
    from tfbird.waveform import stream_windows

    blocks = [np.ones(7, np.float32), np.ones(9, np.float32)]
    assert [s.tolist() for s, _ in stream_windows(blocks, 10, 5)] == [[0, 5], [10]]
    assert [s.tolist() for s, _ in stream_windows(blocks, 10, 5, tail="end_aligned")] == [
        [0, 5], [6]]
    with pytest.raises(ValueError, match="Received: tail='last'"):
        list(stream_windows(blocks, 10, 5, tail="last"))
