"""Train-only augmentation: rolls move frames, masks hit one band, both reproducible."""

import numpy as np
import tensorflow as tf

from tfbird import augment
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


def test_mixup_union_targets_are_the_max_of_both_examples():
    batch = tf.constant(np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 2)),
                        tf.float32)
    labels = tf.constant([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0.2, 0, 0]], tf.float32)
    weighted = mixup(batch, labels, alpha=0.4, seed=[5, 6])
    union = mixup(batch, labels, alpha=0.4, seed=[5, 6], targets="union")
    np.testing.assert_array_equal(union[0], weighted[0])  # same log-mel mix
    # Example i is mixed with example i - 1.
    np.testing.assert_array_equal(
        union[1], np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0.2, 1, 1]], np.float32))


def test_spec_augment_masks_exactly_one_full_time_band_and_one_full_mel_band():
    batch = tf.constant(np.random.default_rng(0).uniform(-50, 0, (8, 30, 12)), tf.float32)
    masked = spec_augment(batch, max_frames=6, max_mels=4, seed=[1, 9]).numpy()
    widths = []
    for example, clean in zip(masked, batch.numpy()):
        hit = example != clean
        rows = np.flatnonzero(hit.all(axis=1))
        cols = np.flatnonzero(hit.all(axis=0))
        band = np.zeros_like(hit)
        band[rows, :] = True
        band[:, cols] = True
        np.testing.assert_array_equal(hit, band)  # nothing outside the two bands
        assert np.all(example[hit] == clean.min())
        for index in (rows, cols):
            if len(index):
                assert index.max() - index.min() + 1 == len(index)  # contiguous
        assert len(rows) <= 6 and len(cols) <= 4
        widths.append((len(rows), len(cols)))
    assert len(set(widths)) > 1


def test_freq_shift_moves_energy_by_the_shift_and_fills_with_the_floor():
    batch = np.full((3, 5, 10), -80.0, np.float32)
    batch[:, :, 4] = 0.0  # one loud band at mel 4
    batch[:, :, 0] = -20.0  # and a quieter one at the bottom edge
    shifted = augment.shift_mels(tf.constant(batch), tf.constant([2, -3, 0])).numpy()
    assert np.all(shifted[0, :, 6] == 0.0) and np.all(shifted[0, :, 2] == -20.0)
    assert np.all(shifted[1, :, 1] == 0.0)  # mel 0 moved below the axis: gone
    np.testing.assert_array_equal(shifted[2], batch[2])
    for example, shift in zip(shifted[:2], (2, -3)):
        loud = np.flatnonzero(example[0] == 0.0)
        assert list(loud) == [4 + shift]
        assert np.sum(example[0] > -80.0) == (2 if shift > 0 else 1)  # the rest is floor
    # Random shifts: within +-max, none with probability 0, all examples moved with 1.
    ramp = tf.constant(np.arange(10, dtype=np.float32)[None, None, :] * np.ones((16, 2, 1)))
    moved = augment.random_freq_shift(ramp, 3, 1.0, seed=[4, 2]).numpy()
    shifts = moved[:, 0, 5] - 5.0  # band 5 now holds band 5 - shift
    assert np.all(np.abs(shifts) <= 3) and len(np.unique(shifts)) > 2
    np.testing.assert_array_equal(augment.random_freq_shift(ramp, 3, 0.0, seed=[4, 2]), ramp)


def measured_snr_db(clean_db, mixed_db):
    """Mean power of the clean example over the mean power that was added, in dB."""
    clean = 10.0 ** (np.asarray(clean_db, np.float64) / 10)
    added = 10.0 ** (np.asarray(mixed_db, np.float64) / 10) - clean
    return 10 * np.log10(clean.mean(axis=(1, 2)) / added.mean(axis=(1, 2)))


def speech_like_batch(batch=6):
    rng = np.random.default_rng(7)
    logmel = rng.uniform(-80.0, -20.0, (batch, 40, 16)).astype(np.float32)
    logmel[:, 10:20, 3:6] = 10.0  # a loud call
    return tf.constant(logmel)


def test_gaussian_noise_is_added_at_the_asked_snr_in_the_power_domain():
    clean = speech_like_batch()
    for snr in (0.0, 12.5, 30.0):
        noisy = augment.add_gaussian_noise(clean, (snr, snr), 1.0, seed=[3, 3])
        np.testing.assert_allclose(measured_snr_db(clean, noisy), snr, atol=0.5)
    noisy = augment.add_gaussian_noise(clean, (5.0, 20.0), 1.0, seed=[3, 4]).numpy()
    snrs = measured_snr_db(clean, noisy)
    assert np.all((snrs > 4.5) & (snrs < 20.5)) and np.ptp(snrs) > 1.0  # one draw per example
    some = augment.add_gaussian_noise(clean, (10.0, 10.0), 0.5, seed=[3, 5]).numpy()
    untouched = np.all(some == clean.numpy(), axis=(1, 2))
    assert 0 < untouched.sum() < len(untouched)


def test_background_is_mixed_at_the_asked_snr_in_the_power_domain():
    clean = speech_like_batch()
    background = tf.constant(np.random.default_rng(8).uniform(-60, -30, (6, 40, 16)), tf.float32)
    mixed = augment.add_background(clean, background, (6.0, 6.0), 1.0, seed=[1, 1]).numpy()
    np.testing.assert_allclose(measured_snr_db(clean, mixed), 6.0, atol=0.5)
    # What was added has the background's shape over time and frequency.
    added = 10.0 ** (mixed / 10) - 10.0 ** (clean.numpy() / 10)
    ratio = added / 10.0 ** (background.numpy() / 10)
    np.testing.assert_allclose(ratio / ratio.mean(axis=(1, 2), keepdims=True), 1.0, rtol=1e-2)


def test_new_augmentations_are_deterministic_and_leave_the_old_draws_alone():
    old = AugmentConfig(time_roll=True, time_mask_frames=4, freq_mask_mels=2, mixup_alpha=0.4)
    new = AugmentConfig(time_roll=True, time_mask_frames=4, freq_mask_mels=2, mixup_alpha=0.4,
                        mixup_targets="union", noise_probability=1.0, freq_shift_mels=2,
                        background_probability=1.0)
    batch, labels = ramp_batch(), tf.eye(4)
    background = ramp_batch() - 30.0
    seed = tf.constant([7, 8], tf.int64)
    a = augment_batch(batch, labels, new, seed, background)
    b = augment_batch(batch, labels, new, seed, background)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # Off, the new options change nothing: the first three ops keep their seeds.
    off = AugmentConfig(time_roll=True, time_mask_frames=4, freq_mask_mels=2, mixup_alpha=0.4,
                        noise_probability=0.0, freq_shift_mels=0)
    for x, y in zip(augment_batch(batch, labels, old, seed),
                    augment_batch(batch, labels, off, seed)):
        np.testing.assert_array_equal(x, y)
