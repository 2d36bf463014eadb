"""Train-only augmentation of log-mel batches, in-graph (runs inside tf.data).

Each op takes and returns a batch ``logmel [batch, frames, mels]`` (dB); only mixup also mixes
the targets ``labels [batch, classes]``. ``augment_batch`` applies them in this order:

- ``random_time_roll``: rolls each example by a random number of frames (a cheap random crop
  of a looped recording: calls land at new positions).
- ``random_freq_shift``: shifts a share of the examples by up to ``max_mels`` mel bands up or
  down; the bands shifted in are the example's floor (no wrap-around).
- ``mixup``: mixes each example with another of the batch, ``lam * a + (1 - lam) * b`` for the
  log-mel, ``lam ~ Beta(alpha, alpha)`` (Zhang et al., 2018); the targets are mixed with the
  same weight (``weighted``) or take the max of both (``union``).
- ``add_background``: mixes a background log-mel (noise recordings ingested with the same front
  end) into a share of the examples at a random SNR.
- ``add_gaussian_noise``: adds noise at a random SNR to a share of the examples.
- ``spec_augment``: SpecAugment masks; up to ``max_frames`` consecutive frames and up to
  ``max_mels`` consecutive mel bands per example are set to the example's minimum (its floor).

Noise and background are mixed in the power domain: the log-mel is ``10 log10(power)``, so
``mixed_db = 10 log10(10^(x/10) + g * noise_power)``, with the gain ``g`` chosen so that the
example's mean power over the added mean power is the drawn SNR.

There is no random gain: the model standardises each example (``tfbird.model``), and noise and
background SNRs are relative to the example's power, so a gain in dB would change nothing the
classifier sees.

Example:
    >>> logmel, labels = augment_batch(logmel, labels, AugmentConfig(mixup_alpha=0.4), seed=[0, 1])
"""

from __future__ import annotations

import tensorflow as tf

from tfbird.config import AugmentConfig, FrontendConfig

AMIN_POWER = FrontendConfig.amin  # The front end's default floor before the log: -100 dB.


def augment_batch(logmel: tf.Tensor, labels: tf.Tensor, cfg: AugmentConfig,
                  seed: tf.Tensor,
                  background: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies the augmentations ``cfg`` turns on, with a stateless ``seed`` ``[2]``.

    ``background`` is a batch of background log-mels shaped like ``logmel`` (from
    ``augment.background_dir``); without it no background is mixed in.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    # Further draws fold their own seeds in instead of widening the split, so the split's
    # three seeds (and what they draw) do not depend on how many draws follow.
    shift_seed, background_seed, noise_seed = (
        tf.random.experimental.stateless_fold_in(seed, k) for k in (3, 4, 5))
    if cfg.time_roll:
        logmel = random_time_roll(logmel, seeds[0])
    if cfg.freq_shift_mels and cfg.freq_shift_probability > 0:
        logmel = random_freq_shift(logmel, cfg.freq_shift_mels, cfg.freq_shift_probability,
                                   shift_seed)
    if cfg.mixup_alpha > 0:
        logmel, labels = mixup(logmel, labels, cfg.mixup_alpha, seeds[2], cfg.mixup_targets)
    if background is not None and cfg.background_probability > 0:
        logmel = add_background(logmel, background, cfg.background_snr_db,
                                cfg.background_probability, background_seed)
    if cfg.noise_probability > 0:
        logmel = add_gaussian_noise(logmel, cfg.noise_snr_db, cfg.noise_probability, noise_seed)
    if cfg.time_mask_frames or cfg.freq_mask_mels:
        logmel = spec_augment(logmel, cfg.time_mask_frames, cfg.freq_mask_mels, seeds[1])
    return logmel, labels


def augment_waveform_batch(waveform: tf.Tensor, labels: tf.Tensor, cfg: AugmentConfig,
                           seed: tf.Tensor, background: tf.Tensor | None = None
                           ) -> tuple[tf.Tensor, tf.Tensor]:
    """The input-pipeline share of the augmentation when the front end is in the model
    (``model.frontend_in_model``): the ops that change targets or need other examples run
    here on waveforms ``[batch, samples]``, with the seeds ``augment_batch`` gives them:

    - ``random_time_roll`` (by samples), ``mixup`` (of waveforms: the log-mel of the mix is
      the mix of the sounds, not of the log-mels), and the background, mixed as waveforms at
      a random SNR (``add_background_waveform``; background records with ``--store pcm``).

    Frequency shift, Gaussian noise and SpecAugment run in the model after the front end
    (``model.LogMelAugmentation``, training only).
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    background_seed = tf.random.experimental.stateless_fold_in(seed, 4)
    if cfg.time_roll:
        waveform = random_time_roll(waveform, seeds[0])
    if cfg.mixup_alpha > 0:
        waveform, labels = mixup(waveform, labels, cfg.mixup_alpha, seeds[2], cfg.mixup_targets)
    if background is not None and cfg.background_probability > 0:
        waveform = add_background_waveform(waveform, background, cfg.background_snr_db,
                                           cfg.background_probability, background_seed)
    return waveform, labels


def add_background_waveform(waveform: tf.Tensor, background: tf.Tensor,
                            snr_db: tuple[float, float], probability: float,
                            seed) -> tf.Tensor:
    """Adds ``background`` ``[batch, samples]`` to a ``probability`` share of the examples,
    scaled so that each example's mean power over the background's is a uniform random
    SNR in ``snr_db`` (dB)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(waveform)[0]
    snr = tf.random.stateless_uniform([batch], seeds[0], snr_db[0], snr_db[1])
    chosen = tf.random.stateless_uniform([batch], seeds[1]) < probability
    signal_power = tf.reduce_mean(tf.square(waveform), axis=1)
    added_power = tf.maximum(tf.reduce_mean(tf.square(background), axis=1), AMIN_POWER)
    gain = tf.sqrt(signal_power / added_power * db_to_power(-snr))
    return tf.where(chosen[:, None], waveform + gain[:, None] * background, waveform)


def log_mel_augment(logmel: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """The model's share of the augmentation with the front end in the model: frequency
    shift, Gaussian noise and SpecAugment on log-mels ``[batch, frames, mels]``, with the
    seeds ``augment_batch`` gives them."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    shift_seed, noise_seed = (tf.random.experimental.stateless_fold_in(seed, k) for k in (3, 5))
    if cfg.freq_shift_mels and cfg.freq_shift_probability > 0:
        logmel = random_freq_shift(logmel, cfg.freq_shift_mels, cfg.freq_shift_probability,
                                   shift_seed)
    if cfg.noise_probability > 0:
        logmel = add_gaussian_noise(logmel, cfg.noise_snr_db, cfg.noise_probability, noise_seed)
    if cfg.time_mask_frames or cfg.freq_mask_mels:
        logmel = spec_augment(logmel, cfg.time_mask_frames, cfg.freq_mask_mels, seeds[1])
    return logmel


def mixup(logmel: tf.Tensor, labels: tf.Tensor, alpha: float, seed,
          targets: str = "weighted") -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes example ``i`` with example ``i+1`` (mod batch) of a shuffled batch.

    The weight ``lam ~ Beta(alpha, alpha)`` per example is drawn as ``g1 / (g1 + g2)`` from
    two Gamma(alpha) draws. ``targets="weighted"`` mixes the targets with the same weight as
    the log-mels; ``"union"`` takes the element-wise max of the two targets.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(logmel)[0]
    g1 = tf.random.stateless_gamma([batch], seeds[0], alpha=alpha)
    g2 = tf.random.stateless_gamma([batch], seeds[1], alpha=alpha)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    partner_logmel = tf.roll(logmel, shift=1, axis=0)
    partner_labels = tf.roll(labels, shift=1, axis=0)
    # [batch, 1, ...]: mixes log-mels [batch, frames, mels] and waveforms [batch, samples].
    lam_x = tf.reshape(tf.cast(lam, logmel.dtype),
                       tf.concat([[batch], tf.ones([tf.rank(logmel) - 1], tf.int32)], 0))
    lam_y = tf.cast(lam, labels.dtype)[:, None]
    if targets == "union":
        mixed_labels = tf.maximum(labels, partner_labels)
    elif targets == "weighted":
        mixed_labels = lam_y * labels + (1 - lam_y) * partner_labels
    else:
        raise ValueError(f"mixup targets must be 'weighted' or 'union'. Received: "
                         f"targets={targets!r}")
    return lam_x * logmel + (1 - lam_x) * partner_logmel, mixed_labels


def random_freq_shift(logmel: tf.Tensor, max_mels: int, probability: float, seed) -> tf.Tensor:
    """Shifts a ``probability`` share of the examples by -max_mels..max_mels mel bands."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(logmel)[0]
    shifts = tf.random.stateless_uniform([batch], seeds[0], -max_mels, max_mels + 1,
                                         dtype=tf.int32)
    chosen = tf.random.stateless_uniform([batch], seeds[1]) < probability
    return shift_mels(logmel, tf.where(chosen, shifts, 0))


def shift_mels(logmel: tf.Tensor, shifts_mels: tf.Tensor) -> tf.Tensor:
    """Moves example ``i`` up by ``shifts_mels[i]`` bands (down if negative), floor-filled."""
    mels = tf.shape(logmel)[2]
    source = tf.range(mels)[None, :] - shifts_mels[:, None]  # [batch, mels]
    inside = (source >= 0) & (source < mels)
    shifted = tf.gather(logmel, tf.clip_by_value(source, 0, mels - 1), axis=2, batch_dims=1)
    floor = tf.reduce_min(logmel, axis=[1, 2], keepdims=True)
    return tf.where(inside[:, None, :], shifted, floor)


def add_gaussian_noise(logmel: tf.Tensor, snr_db: tuple[float, float], probability: float,
                       seed) -> tf.Tensor:
    """Adds white Gaussian noise at a uniform random SNR in ``snr_db`` (dB) to a share of
    the examples.

    The noise power of each time-frequency bin is ``|z|^2`` of a circular complex Gaussian
    ``z`` (the power of white Gaussian noise in one STFT bin; mean 1), scaled to the SNR.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    real_imag = tf.random.stateless_normal(tf.concat([[2], tf.shape(logmel)], 0), seeds[0])
    noise_power = tf.reduce_sum(tf.square(real_imag), axis=0) / 2.0
    return _mix_randomly(logmel, noise_power, snr_db, probability, seeds[1])


def add_background(logmel: tf.Tensor, background_logmel: tf.Tensor,
                   snr_db: tuple[float, float], probability: float, seed) -> tf.Tensor:
    """Mixes ``background_logmel`` (dB, same shape) into a share of the examples at a
    uniform random SNR in ``snr_db`` (dB)."""
    return _mix_randomly(logmel, db_to_power(background_logmel), snr_db, probability, seed)


def _mix_randomly(logmel, added_power, snr_db: tuple[float, float], probability: float, seed):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(logmel)[0]
    snr = tf.random.stateless_uniform([batch], seeds[0], snr_db[0], snr_db[1])
    chosen = tf.random.stateless_uniform([batch], seeds[1]) < probability
    mixed = mix_at_snr(logmel, added_power, snr)
    return tf.where(chosen[:, None, None], mixed, logmel)


def mix_at_snr(logmel: tf.Tensor, added_power: tf.Tensor, snr_db: tf.Tensor) -> tf.Tensor:
    """``logmel`` (dB) plus ``added_power`` scaled so that, per example, mean signal power /
    mean added power = ``snr_db`` ``[batch]`` (dB); mixed in power, returned in dB."""
    signal_power = db_to_power(logmel)
    signal_mean = tf.reduce_mean(signal_power, axis=[1, 2], keepdims=True)
    added_mean = tf.reduce_mean(added_power, axis=[1, 2], keepdims=True)
    gain = signal_mean / tf.maximum(added_mean, AMIN_POWER) * db_to_power(-snr_db)[:, None, None]
    return power_to_db(signal_power + gain * added_power)


def db_to_power(decibels: tf.Tensor) -> tf.Tensor:
    return tf.pow(10.0, decibels / 10.0)


def power_to_db(power: tf.Tensor) -> tf.Tensor:
    return (10.0 / tf.math.log(10.0)) * tf.math.log(tf.maximum(power, AMIN_POWER))


def random_time_roll(logmel: tf.Tensor, seed) -> tf.Tensor:
    """Rolls each example of ``[batch, frames, mels]`` along frames by a random offset."""
    shape = tf.shape(logmel)
    batch, frames = shape[0], shape[1]
    shifts = tf.random.stateless_uniform([batch], seed, 0, frames, dtype=tf.int32)
    index = (tf.range(frames)[None, :] - shifts[:, None]) % frames  # [batch, frames]
    return tf.gather(logmel, index, batch_dims=1)


def spec_augment(logmel: tf.Tensor, max_frames: int, max_mels: int, seed) -> tf.Tensor:
    """One time mask and one frequency mask per example, filled with the example's floor."""
    shape = tf.shape(logmel)
    batch, frames, mels = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    time_mask = _band_mask(batch, frames, max_frames, seeds[0])[:, :, None]
    freq_mask = _band_mask(batch, mels, max_mels, seeds[1])[:, None, :]
    floor = tf.reduce_min(logmel, axis=[1, 2], keepdims=True)
    return tf.where(tf.logical_or(time_mask, freq_mask), floor, logmel)


def _band_mask(batch, length, max_width: int, seed) -> tf.Tensor:
    """``[batch, length]`` booleans, True on one random band of 0..max_width per example."""
    if max_width <= 0:
        return tf.zeros([batch, length], tf.bool)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    width = tf.random.stateless_uniform([batch], seeds[0], 0, max_width + 1, dtype=tf.int32)
    start = tf.cast(tf.random.stateless_uniform([batch], seeds[1]) *
                    tf.cast(length - width + 1, tf.float32), tf.int32)
    position = tf.range(length)[None, :]
    return (position >= start[:, None]) & (position < (start + width)[:, None])
