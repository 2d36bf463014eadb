"""Train-only augmentation: rolls move frames, masks hit one band, both reproducible."""

import numpy as np
import tensorflow as tf

from tfbird.augment import augment_batch, mixup, random_time_roll, spec_augment
from tfbird.config import AugmentConfig


def ramp_batch(batch=4, frames=20, mels=6):
    values = np.arange(frames, dtype=np.float32)[None, :, None] + np.zeros((batch, 1, mels))
    return tf.constant(values, tf.float32)


def test_time_roll_is_a_circular_shift_per_example():
    batch = ramp_batch()
    rolled = random_time_roll(batch, seed=[1, 2]).numpy()
    for example in rolled:
        shift = int(-example[0, 0]) % 20
        np.testing.assert_array_equal(example[:, 0], np.roll(np.arange(20), shift))
        assert np.all(example == example[:, :1])  # every mel band moved together


def test_spec_augment_masks_one_time_and_one_frequency_band_with_the_floor():
    batch = ramp_batch() + 5.0
    masked = spec_augment(batch, max_frames=5, max_mels=2, seed=[3, 4]).numpy()
    original = batch.numpy()
    for example, clean in zip(masked, original):
        hit = example != clean
        assert np.all(example[hit] == clean.min())
        rows = np.flatnonzero(hit.all(axis=1))   # fully masked frames: a contiguous band
        cols = np.flatnonzero(hit.all(axis=0))   # fully masked mels
        assert len(rows) <= 5 and len(cols) <= 2
        if len(rows):
            assert rows.max() - rows.min() + 1 == len(rows)


def test_augment_batch_is_deterministic_given_the_seed():
    cfg = AugmentConfig(time_roll=True, time_mask_frames=4, freq_mask_mels=2, mixup_alpha=0.4)
    batch, labels = ramp_batch(), tf.eye(4)
    a = augment_batch(batch, labels, cfg, tf.constant([7, 8], tf.int64))
    b = augment_batch(batch, labels, cfg, tf.constant([7, 8], tf.int64))
    c = augment_batch(batch, labels, cfg, tf.constant([7, 9], tf.int64))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    unchanged = augment_batch(batch, labels, AugmentConfig(), [1, 1])
    np.testing.assert_array_equal(unchanged[0], batch)
    np.testing.assert_array_equal(unchanged[1], labels)


def test_mixup_mixes_log_mel_and_targets_with_the_same_weight():
    batch = tf.constant(np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 2)),
                        tf.float32)  # example i is all i
    labels = tf.eye(4)
    mixed, targets = (t.numpy() for t in mixup(batch, labels, alpha=0.4, seed=[5, 6]))
    for i in range(4):
        partner = (i - 1) % 4
        lam = targets[i, i]  # own class weight; the partner's class gets 1 - lam
        assert 0.0 <= lam <= 1.0
        np.testing.assert_allclose(targets[i, partner], 1 - lam, atol=1e-6)
        np.testing.assert_allclose(targets[i].sum(), 1.0, atol=1e-6)
        np.testing.assert_allclose(mixed[i], lam * i + (1 - lam) * partner, atol=1e-5)
    assert len(np.unique(np.round(np.diag(targets), 4))) > 1  # one weight per example
