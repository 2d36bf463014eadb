"""The TFRecord schema: feature keys, ``to_example`` / ``parse_example`` side by side, and the
sharded writer.

One ``tf.train.Example`` is one window of one recording. Its feature is one of three stores
(``data.store``, named in the manifest as ``"store"``):

- ``logmel`` (default): the log-mel ``[frames, mels]`` as raw little-endian float16 bytes,
  with ``logmel_shape`` ``[frames, mels]`` (int64), so a record is readable on its own;
- ``pcm``: the window's waveform ``[samples]`` at the audio sample rate as raw little-endian
  int16 bytes (``round(x * 32768)``, clipped), with ``pcm_shape`` ``[samples]``; the reader or
  the model computes the log-mels;
- ``embedding``: the window's embedding ``[dim]`` by a pretrained backbone
  (``tfbird.backbones``; the manifest names it) as raw little-endian float16 bytes, with
  ``embedding_shape`` ``[dim]``;

and, in both:

- ``labels``: the multi-hot target ``[num_classes]`` (float32);
- ``secondary_labels``: multi-hot ``[num_classes]`` of the positives of ``labels`` that are
  only secondary labels of the recording (float32; all zeros in records of schema 1, which
  lack it), so a reader can weight them (``data.secondary_label_weight``);
- ``filename``: the recording, relative to the data root (bytes);
- ``start_s``: the window's start time in the recording (float32, seconds).

Shards are named ``<split>-00003-of-00008.tfrecord`` and written under a temporary name,
then renamed, so a shard that exists is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 2  # 2: secondary_labels
LOGMEL = "logmel"
LOGMEL_SHAPE = "logmel_shape"
PCM = "pcm"
EMBEDDING = "embedding"
STORES = (LOGMEL, PCM, EMBEDDING)
STORE_DTYPES = {LOGMEL: "<f2", PCM: "<i2", EMBEDDING: "<f2"}
PCM_SCALE = 32768.0  # int16 full scale, as soundfile reads 16-bit PCM.
LABELS = "labels"
SECONDARY = "secondary_labels"
FILENAME = "filename"
START_S = "start_s"
MANIFEST = "manifest.json"  # Written by ingest last: the folder's splits, shards and shapes.


def to_example(feature: np.ndarray, labels: np.ndarray, filename: str, start_s: float,
               store: str = LOGMEL, secondary: np.ndarray | None = None) -> bytes:
    """Serialises one window: a ``logmel`` ``[frames, mels]`` (stored as float16), with
    ``store="pcm"`` int16 PCM ``[samples]`` (see ``to_pcm16``), or with ``store="embedding"``
    an embedding ``[dim]`` (stored as float16). ``secondary`` marks the
    positives of ``labels`` that are secondary labels (default: none)."""
    check_store(store)
    features = {
        store: _bytes_feature(np.ascontiguousarray(feature, dtype=STORE_DTYPES[store]).tobytes()),
        store + "_shape": tf.train.Feature(int64_list=tf.train.Int64List(value=feature.shape)),
        LABELS: tf.train.Feature(float_list=tf.train.FloatList(value=labels)),
        SECONDARY: tf.train.Feature(float_list=tf.train.FloatList(
            value=np.zeros_like(labels) if secondary is None else secondary)),
        FILENAME: _bytes_feature(filename.encode("utf-8")),
        START_S: tf.train.Feature(float_list=tf.train.FloatList(value=[start_s])),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def feature_description(num_classes: int, store: str = LOGMEL) -> dict:
    check_store(store)
    return {
        store: tf.io.FixedLenFeature([], tf.string),
        store + "_shape": tf.io.FixedLenFeature([2 if store == LOGMEL else 1], tf.int64),
        LABELS: tf.io.FixedLenFeature([num_classes], tf.float32),
        SECONDARY: tf.io.FixedLenFeature([num_classes], tf.float32,
                                         default_value=[0.0] * num_classes),
        FILENAME: tf.io.FixedLenFeature([], tf.string),
        START_S: tf.io.FixedLenFeature([], tf.float32),
    }


def parse_example(serialized: tf.Tensor, num_classes: int, shape: tuple[int, ...],
                  store: str = LOGMEL) -> dict:
    """Parses one serialised example into ``{store: float32 feature, labels, ...}``: the
    log-mel ``[frames, mels]`` in dB, the PCM waveform ``[samples]`` scaled to [-1, 1), or
    the embedding ``[dim]``."""
    features = tf.io.parse_single_example(serialized, feature_description(num_classes, store))
    if store == PCM:
        pcm = tf.io.decode_raw(features[PCM], tf.int16, little_endian=True)
        features[PCM] = tf.reshape(tf.cast(pcm, tf.float32) / PCM_SCALE, shape)
    else:
        values = tf.io.decode_raw(features[store], tf.float16, little_endian=True)
        features[store] = tf.cast(tf.reshape(values, shape), tf.float32)
    return features


def to_pcm16(waveform: tf.Tensor) -> tf.Tensor:
    """float32 waveform -> int16 ``round(x * 32768)``, clipped to the int16 range (graph)."""
    scaled = tf.math.round(tf.convert_to_tensor(waveform, tf.float32) * PCM_SCALE)
    return tf.cast(tf.clip_by_value(scaled, -PCM_SCALE, PCM_SCALE - 1), tf.int16)


def check_store(store: str) -> None:
    if store not in STORES:
        raise ValueError(f"store must be one of {list(STORES)}. Received: store={store!r}")


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


class PendingExamples:
    """The examples of one recording, held back until it is known good (``commit``) or
    failed (``discard``), so a recording that fails mid-stream leaves nothing in a shard.

    Up to ``max_bytes`` are held in memory; beyond that they go to a temporary TFRecord file
    ``spill_path`` (a recording of hours), read back into the shard by ``commit``.

    Example:
        >>> pending = PendingExamples(Path("train-00000-of-00001.tfrecord.spill.tmp"))
        >>> pending.add(to_example(logmel, labels, "a.wav", 0.0))
        >>> pending.commit(writer)
    """

    def __init__(self, spill_path: str | Path, max_bytes: int = 64 * 2**20):
        self.spill_path = Path(spill_path)
        self.max_bytes = max_bytes
        self.num_examples = 0
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._spill = None

    def add(self, serialized: bytes) -> None:
        self._held.append(serialized)
        self._held_bytes += len(serialized)
        self.num_examples += 1
        if self._held_bytes > self.max_bytes:
            if self._spill is None:
                self._spill = tf.io.TFRecordWriter(str(self.spill_path))
            for example in self._held:
                self._spill.write(example)
            self._held, self._held_bytes = [], 0

    def commit(self, writer: ShardWriter) -> None:
        """Writes the held examples to ``writer``, in the order they were added."""
        if self._spill is not None:
            self._spill.close()
            for example in tf.data.TFRecordDataset(str(self.spill_path)).as_numpy_iterator():
                writer.write(example)
        for example in self._held:
            writer.write(example)
        self.discard()

    def discard(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self.spill_path.unlink(missing_ok=True)
        self._held, self._held_bytes, self._spill = [], 0, None


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def read_manifest(records_dir: str | Path) -> dict:
    """The records folder's ``manifest.json`` (what ``ingest`` wrote: splits, shards, shapes,
    store, labels), read by every reader of the records.

    Raises:
        ValueError: a folder without one (not ingested, or a worker still running).
    """
    path = Path(records_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"No {MANIFEST} in the records folder; run `tfbird ingest` first "
                         f"(with --workers, every worker must finish). "
                         f"Received: records={str(records_dir)!r}")
    return json.loads(path.read_text())
