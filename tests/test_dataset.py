"""Background noise for augmentation comes from a records folder with the same front end."""

import json

import numpy as np
import pytest

from tfbird import dataset, ingest
from tfbird.config import AugmentConfig


def all_logmels(records_dir, manifest):
    found = []
    for split in manifest["splits"]:
        data = dataset.make_dataset(records_dir, manifest, split, batch_size=64)
        found += [x for x, _ in data.unbatch().as_numpy_iterator()]
    return np.stack(found)


def test_background_batches_are_log_mels_from_every_split(tiny_records):
    manifest = ingest.read_manifest(tiny_records)
    shape = tuple(manifest["feature"]["shape"])
    known = all_logmels(tiny_records, manifest)
    batches = list(dataset.background_dataset(tiny_records, shape, batch_size=3)
                   .take(2 * len(known)).as_numpy_iterator())  # endless
    assert all(batch.shape == (3, *shape) for batch in batches)
    drawn = np.concatenate(batches)
    distance = np.abs(drawn[:, None] - known[None]).max(axis=(2, 3))  # [drawn, known]
    assert np.all(distance.min(axis=1) == 0)  # every background is a record's log-mel
    assert np.all(distance.min(axis=0) == 0)  # every record is used, train and valid


def test_training_batches_mix_in_the_background(tiny_records):
    manifest = ingest.read_manifest(tiny_records)
    cfg = AugmentConfig(background_dir=str(tiny_records), background_probability=1.0,
                        background_snr_db=(-60.0, -60.0))
    x, y = next(iter(dataset.make_dataset(tiny_records, manifest, "train", batch_size=2,
                                          spec=dataset.ReadSpec(training=True, augment=cfg))))
    assert x.shape == (2, *manifest["feature"]["shape"]) and y.shape == (2, 2)
    # At -60 dB SNR the mix is the background: each example is a record's log-mel + a gain,
    # except in the few bins where the background sits at its floor and the signal does not.
    known = all_logmels(tiny_records, manifest)
    for example in x.numpy():
        offsets = example[None] - known  # [known, frames, mels]
        median = np.median(offsets, axis=(1, 2), keepdims=True)
        close = np.mean(np.abs(offsets - median) < 0.05, axis=(1, 2))
        assert close.max() > 0.9


def test_background_with_another_log_mel_shape_is_refused(tiny_records, tmp_path):
    manifest = ingest.read_manifest(tiny_records)
    (tmp_path / ingest.MANIFEST).write_text(json.dumps(
        {**manifest, "feature": {**manifest["feature"], "shape": [100, 64]}}))
    with pytest.raises(ValueError, match="same audio and front-end"):
        dataset.background_dataset(tmp_path, tuple(manifest["feature"]["shape"]), 2)


def test_targets_per_task_and_the_classes_they_mark():
    labels = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], np.float32)
    secondary = np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(dataset.read_targets(labels, secondary), labels)
    np.testing.assert_allclose(dataset.read_targets(labels, secondary, "multilabel", 0.5),
                               [[1, 0.5, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    multiclass = dataset.read_targets(labels, secondary, "multiclass").numpy()
    # Primary one-hot; no class: uniform; two primaries (Raven boxes): shared.
    np.testing.assert_allclose(multiclass, [[1, 0, 0, 0], [0.25] * 4, [0.5, 0, 0.5, 0]])
    np.testing.assert_array_equal(dataset.positive_targets(multiclass, "multiclass"),
                                  [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(
        dataset.positive_targets(dataset.read_targets(labels, secondary, "multilabel", 0.5)),
        labels)
    with pytest.raises(ValueError, match="Received: task='binary'"):
        dataset.read_targets(labels, secondary, "binary")


def test_validation_steps_are_padded_so_no_replica_gets_an_empty_batch():
    """5 examples in batches of 2 on 2 replicas: 3 real batches, one filler, weights 0 on the
    padding, and the weighted ROC-AUC equals sklearn's on the 5 real examples."""
    import keras
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    x = np.arange(5, dtype=np.float32)[:, None]
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    scores = np.array([[0.9, 0.2], [0.3, 0.8], [0.4, 0.1], [0.6, 0.7], [0.2, 0.3]], np.float32)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    padded = list(dataset.pad_to_full_steps(batches, 2, replicas_per_pipeline=2)
                  .as_numpy_iterator())
    assert len(padded) == 4
    assert all(bx.shape == (2, 1) and by.shape == (2, 2) and bw.shape == (2,)
               for bx, by, bw in padded)
    weights = np.concatenate([bw for _, _, bw in padded])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.concatenate([bx for bx, _, _ in padded])[:5], x)

    auc = keras.metrics.AUC(multi_label=True, num_thresholds=2001)
    for bx, by, bw in padded:
        # Padding repeats an example, here with another score: only its weight keeps it out.
        batch_scores = np.where(bw[:, None] > 0, scores[bx[:, 0].astype(int)], 0.99)
        auc.update_state(by, batch_scores, bw)
    expected = roc_auc_score(y, scores, average="macro")
    assert float(auc.result()) == pytest.approx(expected, abs=1e-3)
