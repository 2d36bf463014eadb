"""Train-only augmentation of log-mel batches, in-graph (runs inside tf.data).

Each op takes and returns a batch ``logmel [batch, frames, mels]`` (dB); only mixup also mixes
the targets ``labels [batch, classes]``.

- ``mixup``: mixes each example with another of the batch, ``lam * a + (1 - lam) * b`` for both
  the log-mel and the targets, ``lam ~ Beta(alpha, alpha)`` (Zhang et al., 2018).
- ``random_time_roll``: rolls each example by a random number of frames (a cheap random crop
  of a looped recording: calls land at new positions).
- ``spec_augment``: SpecAugment masks; up to ``max_frames`` consecutive frames and up to
  ``max_mels`` consecutive mel bands per example are set to the example's minimum (its floor).

Example:
    >>> logmel, labels = augment_batch(logmel, labels, AugmentConfig(mixup_alpha=0.4), seed=[0, 1])
"""

from __future__ import annotations

import tensorflow as tf

from tfbird.config import AugmentConfig


def augment_batch(logmel: tf.Tensor, labels: tf.Tensor, cfg: AugmentConfig,
                  seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies the augmentations ``cfg`` turns on, with a stateless ``seed`` ``[2]``."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if cfg.time_roll:
        logmel = random_time_roll(logmel, seeds[0])
    if cfg.mixup_alpha > 0:
        logmel, labels = mixup(logmel, labels, cfg.mixup_alpha, seeds[2])
    if cfg.time_mask_frames or cfg.freq_mask_mels:
        logmel = spec_augment(logmel, cfg.time_mask_frames, cfg.freq_mask_mels, seeds[1])
    return logmel, labels


def mixup(logmel: tf.Tensor, labels: tf.Tensor, alpha: float, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes example ``i`` with example ``i+1`` (mod batch) of a shuffled batch.

    The weight ``lam ~ Beta(alpha, alpha)`` per example is drawn as ``g1 / (g1 + g2)`` from
    two Gamma(alpha) draws; log-mel and targets get the same weight.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(logmel)[0]
    g1 = tf.random.stateless_gamma([batch], seeds[0], alpha=alpha)
    g2 = tf.random.stateless_gamma([batch], seeds[1], alpha=alpha)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    partner_logmel = tf.roll(logmel, shift=1, axis=0)
    partner_labels = tf.roll(labels, shift=1, axis=0)
    lam_x = tf.cast(lam, logmel.dtype)[:, None, None]
    lam_y = tf.cast(lam, labels.dtype)[:, None]
    return (lam_x * logmel + (1 - lam_x) * partner_logmel,
            lam_y * labels + (1 - lam_y) * partner_labels)


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
