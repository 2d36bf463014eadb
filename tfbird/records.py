"""The TFRecord schema: feature keys, ``to_example`` / ``parse_example`` side by side, and the
sharded writer.

One ``tf.train.Example`` is one window of one recording:

- ``logmel``: the log-mel ``[frames, mels]`` as raw little-endian float16 bytes;
- ``logmel_shape``: ``[frames, mels]`` (int64), so a record is readable on its own;
- ``labels``: the multi-hot target ``[num_classes]`` (float32);
- ``filename``: the recording, relative to the data root (bytes);
- ``start_s``: the window's start time in the recording (float32, seconds).

Shards are named ``<split>-00003-of-00008.tfrecord`` and written under a temporary name,
then renamed, so a shard that exists is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
LOGMEL = "logmel"
LOGMEL_SHAPE = "logmel_shape"
LABELS = "labels"
FILENAME = "filename"
START_S = "start_s"
STORAGE_DTYPE = np.float16


def to_example(logmel: np.ndarray, labels: np.ndarray, filename: str, start_s: float) -> bytes:
    """Serialises one window. ``logmel`` is ``[frames, mels]``, stored as float16."""
    features = {
        LOGMEL: _bytes_feature(np.ascontiguousarray(logmel, dtype="<f2").tobytes()),
        LOGMEL_SHAPE: tf.train.Feature(int64_list=tf.train.Int64List(value=logmel.shape)),
        LABELS: tf.train.Feature(float_list=tf.train.FloatList(value=labels)),
        FILENAME: _bytes_feature(filename.encode("utf-8")),
        START_S: tf.train.Feature(float_list=tf.train.FloatList(value=[start_s])),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def feature_description(num_classes: int) -> dict:
    return {
        LOGMEL: tf.io.FixedLenFeature([], tf.string),
        LOGMEL_SHAPE: tf.io.FixedLenFeature([2], tf.int64),
        LABELS: tf.io.FixedLenFeature([num_classes], tf.float32),
        FILENAME: tf.io.FixedLenFeature([], tf.string),
        START_S: tf.io.FixedLenFeature([], tf.float32),
    }


def parse_example(serialized: tf.Tensor, num_classes: int, logmel_shape: tuple[int, int]) -> dict:
    """Parses one serialised example into ``{logmel: float32 [frames, mels], labels, ...}``."""
    features = tf.io.parse_single_example(serialized, feature_description(num_classes))
    logmel = tf.io.decode_raw(features[LOGMEL], tf.float16, little_endian=True)
    features[LOGMEL] = tf.cast(tf.reshape(logmel, logmel_shape), tf.float32)
    return features


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


class ShardWriter:
    """Writes one shard atomically: ``with ShardWriter(path) as w: w.write(example)``.

    The data goes to ``<path>.tmp``, which is renamed to ``path`` only when the block exits
    without an error.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.temporary_path = self.path.with_name(self.path.name + ".tmp")
        self.num_examples = 0
        self._writer = None

    def __enter__(self) -> ShardWriter:
        self._writer = tf.io.TFRecordWriter(str(self.temporary_path))
        return self

    def write(self, serialized: bytes) -> None:
        self._writer.write(serialized)
        self.num_examples += 1

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._writer.close()
        if exc_type is None:
            os.replace(self.temporary_path, self.path)
        else:
            self.temporary_path.unlink(missing_ok=True)


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
