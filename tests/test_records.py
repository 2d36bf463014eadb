"""The TFRecord schema survives a round trip; shards appear only when complete."""

import numpy as np
import pytest
import tensorflow as tf

from tfbird import records


def test_example_round_trip():
    rng = np.random.default_rng(0)
    logmel = rng.uniform(-100, 0, size=(11, 7)).astype(np.float32)
    labels = np.array([0, 1, 1], np.float32)
    serialized = records.to_example(logmel, labels, "sp01/x.ogg", 5.0)
    parsed = records.parse_example(tf.constant(serialized), num_classes=3, logmel_shape=(11, 7))
    np.testing.assert_allclose(parsed[records.LOGMEL].numpy(), logmel, atol=0.07)  # float16
    np.testing.assert_array_equal(parsed[records.LOGMEL_SHAPE].numpy(), [11, 7])
    np.testing.assert_array_equal(parsed[records.LABELS].numpy(), labels)
    assert parsed[records.FILENAME].numpy() == b"sp01/x.ogg"
    assert parsed[records.START_S].numpy() == 5.0


def test_shard_is_renamed_only_on_success(tmp_path):
    path = tmp_path / records.shard_name("train", 0, 2)
    assert path.name == "train-00000-of-00002.tfrecord"
    with pytest.raises(RuntimeError), records.ShardWriter(path) as writer:
        writer.write(b"x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with records.ShardWriter(path) as writer:
        writer.write(b"a")
        writer.write(b"b")
    assert writer.num_examples == 2
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == [b"a", b"b"]
