"""Audio files -> mono float32 waveforms at the model's sample rate, and waveforms -> windows.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG Vorbis, Opus, MP3, ...), downmixes by the
channel mean and resamples with soxr's high quality mode: the same steps and defaults as
``librosa.load(path, sr=..., mono=True)``, which is the reference. Decoding is plain numpy (it
runs inside tf.data through ``tf.numpy_function``; libsndfile and soxr release the GIL). Cutting
windows is graph code.

Example:
    >>> waveform = load_waveform("call.flac", sample_rate_hz=32000)
    >>> windows, starts = cut_windows(waveform, AudioConfig())
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import soundfile
import soxr
import tensorflow as tf

from tfbird.config import AudioConfig


class AudioDecodeError(ValueError):
    """A file that cannot become a waveform.

    The message is ``"<reason>: <detail naming the file>"``; the reason is one of
    ``DECODE_FAILURE_REASONS``, and ``failure_reason(message)`` gets it back.
    """


DECODE_FAILURE_REASONS = ("file missing", "empty", "unreadable", "no audio after decode",
                          "all-NaN", "non-finite")


def failure_reason(message: str) -> str:
    """The reason part (before the first ``": "``) of an ``AudioDecodeError`` message."""
    return message.split(": ", 1)[0]


def check_file_exists_with_bytes(path: str | Path) -> Path:
    """``path`` as a ``Path``; ``AudioDecodeError`` "file missing" or "empty" (zero bytes)."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"file missing: {path}")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"empty: the file has zero bytes: {path}")
    return path


def load_waveform(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """Decodes an audio file to a mono float32 waveform at ``sample_rate_hz``.

    Args:
        path: any file libsndfile reads (WAV, FLAC, OGG Vorbis, Opus, MP3, ...).
        sample_rate_hz: the rate of the returned waveform (Hz).

    Returns:
        float32 array ``[samples]``.

    Raises:
        AudioDecodeError: missing file (``file missing``), zero bytes (``empty``), not audio
            (``unreadable``), no frames (``no audio after decode``), only NaN samples
            (``all-NaN``) or some NaN/inf samples (``non-finite``).
    """
    path = check_file_exists_with_bytes(path)
    try:
        audio, source_rate_hz = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises several types; all mean "unreadable".
        raise AudioDecodeError(f"unreadable: {path}: {error}") from error
    if audio.shape[0] == 0:
        raise AudioDecodeError(f"no audio after decode: the file holds no audio frames: {path}")
    mono = audio.mean(axis=1, dtype=np.float32)
    finite = np.isfinite(mono)
    if not finite.any():
        raise AudioDecodeError(f"all-NaN: every sample is non-finite (NaN or inf): {path}")
    if not finite.all():
        raise AudioDecodeError(f"non-finite: {np.count_nonzero(~finite)} of {len(mono)} "
                               f"samples are NaN or inf: {path}")
    return resample(mono, source_rate_hz, sample_rate_hz)


def resample(waveform: np.ndarray, source_rate_hz: int, sample_rate_hz: int) -> np.ndarray:
    """Resamples with soxr 'HQ' (librosa's default ``res_type='soxr_hq'``)."""
    if source_rate_hz == sample_rate_hz:
        return np.ascontiguousarray(waveform, dtype=np.float32)
    resampled = soxr.resample(waveform, source_rate_hz, sample_rate_hz, quality="HQ")
    # librosa fixes the length to ceil(n * ratio); soxr may return one sample fewer.
    num_samples = int(np.ceil(len(waveform) * sample_rate_hz / source_rate_hz))
    return librosa.util.fix_length(resampled.astype(np.float32, copy=False), size=num_samples)


def decode_for_pipeline(path: bytes, sample_rate_hz: int) -> tuple[np.ndarray, bytes]:
    """``load_waveform`` for ``tf.numpy_function``: never raises, reports the error instead.

    Returns:
        ``(waveform, error)``: on failure the waveform is one zero sample and ``error`` the
        reason as UTF-8 bytes; on success ``error`` is empty.
    """
    try:
        return load_waveform(path.decode("utf-8"), int(sample_rate_hz)), b""
    except Exception as error:  # Reported per file by the caller, never dropped.
        message = (str(error) if isinstance(error, AudioDecodeError)
                   else f"unreadable: {type(error).__name__}: {error}")
        return np.zeros([1], np.float32), message.encode("utf-8")


def cut_windows(waveform: tf.Tensor, audio: AudioConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Cuts a waveform into windows of ``audio.window_s`` every ``audio.hop_s`` (graph code).

    A window reaching past the end is filled by ``audio.pad_mode`` (zeros, or the recording
    repeated). Tail windows holding less than ``audio.min_window_fraction`` of real audio are
    dropped, but the first window is always kept, so every non-empty recording gives at
    least one window.

    Args:
        waveform: float32 ``[samples]`` at ``audio.sample_rate_hz``.
        audio: window length, hop and padding rule.

    Returns:
        ``(windows, start_s)``: float32 ``[num_windows, window_samples]`` and the start time of
        each window in seconds ``[num_windows]``.
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
    if pad_mode == "zeros":
        return tf.pad(waveform, [[0, tf.maximum(length - num_samples, 0)]])
    raise ValueError(f"pad_mode must be 'zeros' or 'repeat'. Received: pad_mode={pad_mode!r}")
