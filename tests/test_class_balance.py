"""Class balance from the config: per-class loss weights (``train.class_weighting``) and
balanced sampling by primary class in the reader (``data.sampling``)."""

import keras
import numpy as np
import pytest

from tfbird import config, training


def test_balanced_class_weights_are_inverse_frequency_clipped():
    weights = training.balanced_class_weights([90, 10, 0, 1], num_examples=100)
    np.testing.assert_allclose(weights, [100 / 360, 2.5, 1.0, 10.0], rtol=1e-6)  # 25 -> 10


@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_class_weights_change_the_multilabel_loss_as_computed_by_hand(loss):
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], np.float32)
    logits = np.array([[2.0, -1.0, -0.5], [0.3, 1.5, -2.0]], np.float32)
    weights = np.array([0.5, 2.0, 4.0], np.float32)
    cfg = config.TrainConfig(loss=loss, focal_gamma=2.0)
    p = 1 / (1 + np.exp(-logits))
    p_true = np.where(y == 1, p, 1 - p)
    elementwise = -np.log(p_true) * ((1 - p_true) ** 2 if loss == "focal" else 1.0)
    unweighted = float(training.build_loss(cfg)(y, logits))
    weighted = float(training.build_loss(cfg, class_weights=weights)(y, logits))
    np.testing.assert_allclose(unweighted, elementwise.mean(), rtol=1e-5)
    np.testing.assert_allclose(weighted, (elementwise * weights).mean(), rtol=1e-5)


def test_class_weights_of_a_multiclass_loss_weight_each_example_by_its_class():
    y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    logits = np.array([[0.2, 0.1], [1.0, -1.0]], np.float32)
    cfg = config.TrainConfig()
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_example = -(y * log_softmax).sum(axis=1)
    loss = training.build_loss(cfg, "multiclass", np.array([1.0, 3.0], np.float32))
    np.testing.assert_allclose(float(loss(y, logits)), (per_example * [1.0, 3.0]).mean(),
                               rtol=1e-5)


def test_class_weighted_loss_survives_serialization():
    loss = training.build_loss(config.TrainConfig(loss="focal"),
                               class_weights=np.array([1.0, 2.0], np.float32))
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    y, logits = np.array([[1.0, 0.0]], np.float32), np.array([[0.5, 0.5]], np.float32)
    assert float(again(y, logits)) == pytest.approx(float(loss(y, logits)))
    assert again.class_weights == [1.0, 2.0]


def write_skewed_records(folder, counts):
    """One shard of tiny log-mel records: ``counts[k]`` records of primary class k (the last
    entry: records without a label); class 0 records also carry class 1 as secondary."""
    from tfbird import records

    num_classes = len(counts) - 1
    rows = []
    with records.ShardWriter(folder / "train-00000-of-00001.tfrecord") as writer:
        for k, count in enumerate(counts):
            for i in range(count):
                labels, secondary = np.zeros(num_classes, np.float32), np.zeros(
                    num_classes, np.float32)
                if k < num_classes:
                    labels[k] = 1.0
                if k == 0:
                    labels[1] = secondary[1] = 1.0
                logmel = np.full([4, 3], k, np.float32)
                writer.write(records.to_example(logmel, labels, f"{k}-{i}.wav", 0.0,
                                                secondary=secondary))
                rows.append(k)
    return {"labels": [f"c{k}" for k in range(num_classes)], "store": "logmel",
            "feature": {"name": "logmel", "dtype": "float16", "shape": [4, 3]},
            "splits": {"train": {"shards": [{"file": "train-00000-of-00001.tfrecord",
                                             "examples": len(rows)}]}}}


def test_balanced_sampling_draws_the_primary_classes_evenly(tmp_path):
    from tfbird import dataset

    counts = [200, 20, 5, 0, 40]  # c0 common (with c1 secondary), c3 absent, 40 unlabelled
    manifest = write_skewed_records(tmp_path, counts)
    np.testing.assert_array_equal(dataset.primary_class_counts(
        [str(tmp_path / "train-00000-of-00001.tfrecord")], 4), counts)

    def drawn(sampling):
        data = dataset.make_dataset(tmp_path, manifest, "train", batch_size=100,
                                    spec=dataset.ReadSpec(training=True, seed=3,
                                                          shuffle_buffer_size=50,
                                                          sampling=sampling))
        # The log-mel holds the primary class (4 for "none"): count what was drawn.
        classes = np.concatenate([x[:, 0, 0] for x, _ in data.take(20).as_numpy_iterator()])
        return np.bincount(classes.astype(int), minlength=5)

    balanced, natural = drawn("balanced"), drawn("natural")
    assert balanced.sum() == natural.sum() == 2000
    assert balanced[3] == 0 and np.all(np.abs(balanced[[0, 1, 2, 4]] - 500) < 75)
    assert natural[0] > 1400 and natural[2] < 60  # as the records come: 75% and 2%
