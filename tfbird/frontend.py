"""The log-mel front end: one Keras layer used by ingest (inside tf.data) and by the exported model.

It reproduces ``librosa.feature.melspectrogram`` (centred frames, zero padding, periodic Hann
window, Slaney mel scale and norm) followed by ``librosa.power_to_db(ref=1.0)``. The filterbank
comes from ``librosa.filters.mel``; everything else is graph code (``tf.signal``), so the layer
runs in tf.data, on an accelerator, in a SavedModel and in TFLite with builtin ops.

Example:
    >>> layer = LogMelSpectrogram(sample_rate_hz=32000)
    >>> layer(tf.zeros([2, 160000])).shape
    TensorShape([2, 501, 128])
"""

from __future__ import annotations

import math

import keras
import librosa
import numpy as np
import tensorflow as tf

from tfbird.config import AudioConfig, FrontendConfig


@keras.saving.register_keras_serializable(package="tfbird")
class LogMelSpectrogram(keras.layers.Layer):
    """Waveform ``[batch, samples]`` -> log-mel ``[batch, frames, n_mels]`` in dB.

    Args:
        sample_rate_hz: sample rate of the input waveform (Hz).
        n_fft: FFT size and Hann window length, in samples.
        hop_length: step between frames, in samples.
        n_mels: number of mel bands.
        fmin_hz: lowest mel band edge (Hz).
        fmax_hz: highest mel band edge (Hz).
        power: exponent applied to the STFT magnitude (2 = power spectrogram).
        amin: floor applied before ``10 * log10``.
        top_db: each example is clipped to ``max - top_db``; ``None`` disables clipping.

    ``frames = 1 + samples // hop_length``: frames are centred, the signal zero-padded by
    ``n_fft // 2`` on both sides, exactly as librosa with ``center=True``.
    """

    def __init__(self, sample_rate_hz: int = 32000, n_fft: int = 1024, hop_length: int = 320,
                 n_mels: int = 128, fmin_hz: float = 20.0, fmax_hz: float = 16000.0,
                 power: float = 2.0, amin: float = 1e-10, top_db: float | None = 80.0,
                 **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        # === Config ===
        self.sample_rate_hz = int(sample_rate_hz)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin_hz = float(fmin_hz)
        self.fmax_hz = float(fmax_hz)
        self.power = float(power)
        self.amin = float(amin)
        self.top_db = None if top_db is None else float(top_db)
        # === Constants ===
        self.mel_matrix = librosa.filters.mel(
            sr=self.sample_rate_hz, n_fft=self.n_fft, n_mels=self.n_mels,
            fmin=self.fmin_hz, fmax=self.fmax_hz, htk=False, norm="slaney",
            dtype=np.float32).T  # [n_fft // 2 + 1, n_mels]

    def call(self, waveform):
        waveform = tf.convert_to_tensor(waveform, tf.float32)
        pad = self.n_fft // 2
        paddings = [[0, 0]] * (len(waveform.shape) - 1) + [[pad, pad]]
        padded = tf.pad(waveform, paddings)
        stft = tf.signal.stft(padded, frame_length=self.n_fft, frame_step=self.hop_length,
                              fft_length=self.n_fft, window_fn=tf.signal.hann_window,
                              pad_end=False)
        power_spec = tf.math.square(tf.math.real(stft)) + tf.math.square(tf.math.imag(stft))
        if self.power != 2.0:
            power_spec = tf.math.pow(power_spec, self.power / 2.0)
        mel = tf.linalg.matmul(power_spec, tf.constant(self.mel_matrix))
        log_mel = (10.0 / math.log(10.0)) * tf.math.log(tf.math.maximum(mel, self.amin))
        if self.top_db is not None:
            peak = tf.math.reduce_max(log_mel, axis=[-2, -1], keepdims=True)
            log_mel = tf.math.maximum(log_mel, peak - self.top_db)
        return log_mel

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def compute_output_shape(self, input_shape):
        samples = input_shape[-1]
        frames = None if samples is None else self.num_frames(samples)
        return tuple(input_shape[:-1]) + (frames, self.n_mels)

    def get_config(self):
        config = super().get_config()
        config.update({
            "sample_rate_hz": self.sample_rate_hz, "n_fft": self.n_fft,
            "hop_length": self.hop_length, "n_mels": self.n_mels, "fmin_hz": self.fmin_hz,
            "fmax_hz": self.fmax_hz, "power": self.power, "amin": self.amin,
            "top_db": self.top_db,
        })
        return config


def build_frontend(audio: AudioConfig, frontend: FrontendConfig) -> LogMelSpectrogram:
    """The front end layer for a config; the only place it is constructed from one."""
    return LogMelSpectrogram(
        sample_rate_hz=audio.sample_rate_hz, n_fft=frontend.n_fft,
        hop_length=frontend.hop_length, n_mels=frontend.n_mels, fmin_hz=frontend.fmin_hz,
        fmax_hz=frontend.fmax_hz, power=frontend.power, amin=frontend.amin,
        top_db=frontend.top_db, name="log_mel_spectrogram")
