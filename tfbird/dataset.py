"""TFRecord shards -> batches of ``(logmel [batch, frames, mels], labels [batch, classes])``.

Training input: shuffle the shard files, give each input pipeline (one per worker) its own
files, interleave reads from several shards at once, parse in parallel, shuffle examples,
batch by the per-replica batch size and prefetch. Evaluation input keeps the record order so
predictions line up with labels.

Example:
    >>> manifest = read_manifest("records/demo")
    >>> ds = make_dataset("records/demo", manifest, "valid", batch_size=32, training=False)
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tfbird import records
from tfbird.augment import augment_batch
from tfbird.config import AugmentConfig
from tfbird.ingest import read_manifest


def shard_paths(records_dir: str | Path, manifest: dict, split: str) -> list[str]:
    """Paths of a split's shards that hold at least one example."""
    if split not in manifest["splits"]:
        raise ValueError(f"No split {split!r} in the manifest; it has "
                         f"{sorted(manifest['splits'])}. Received: split={split!r}")
    return [str(Path(records_dir) / shard["file"])
            for shard in manifest["splits"][split]["shards"] if shard["examples"] > 0]


def make_dataset(records_dir: str | Path, manifest: dict, split: str, batch_size: int,
                 training: bool, seed: int = 0, shuffle_buffer_size: int = 2048,
                 input_context: tf.distribute.InputContext | None = None,
                 augment: AugmentConfig | None = None) -> tf.data.Dataset:
    """Reads one split as batches of ``(logmel, labels)``.

    Args:
        records_dir: folder with the shards and ``manifest.json``.
        manifest: the parsed manifest (labels, feature shape, shards).
        split: ``"train"`` or ``"valid"``.
        batch_size: examples per batch of this pipeline (per replica under a strategy).
        training: shuffle files and examples, repeat forever and drop the last partial batch.
        seed: shuffling seed.
        shuffle_buffer_size: examples in the shuffle buffer (training only).
        input_context: from ``distribute_datasets_from_function``; each input pipeline then
            reads its own subset of the files.
        augment: train-only augmentation of each batch (ignored when not ``training``).

    Returns:
        A ``tf.data.Dataset`` of ``(float32 [batch, frames, mels], float32 [batch, classes])``.
    """
    files = shard_paths(records_dir, manifest, split)
    if not files:
        raise ValueError(f"The {split!r} split of {records_dir} has no examples. "
                         f"Received: split={split!r}")
    num_classes = len(manifest["labels"])
    logmel_shape = tuple(manifest["feature"]["shape"])

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        # Shuffle whole files first: cheap, and it varies which shards are read together.
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if input_context is not None and input_context.num_input_pipelines > 1:
        # One pipeline per worker: shard by file so workers never read the same examples.
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    if training:
        dataset = dataset.repeat()
    # Read several shards at once so one slow file does not stall the pipeline.
    dataset = dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)

    def parse(serialized):
        example = records.parse_example(serialized, num_classes, logmel_shape)
        return example[records.LOGMEL], example[records.LABELS]

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    if training and augment is not None:
        # One stateless seed per batch from a seeded stream: reproducible augmentation.
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        inputs = [dataset, seeds]
        if augment.background_dir:
            inputs.append(background_dataset(augment.background_dir, logmel_shape, batch_size,
                                             seed, shuffle_buffer_size))
        dataset = tf.data.Dataset.zip(*inputs).map(
            lambda batch, seed_pair, *background: augment_batch(*batch, augment, seed_pair,
                                                                *background),
            num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def background_dataset(records_dir: str | Path, logmel_shape: tuple[int, int], batch_size: int,
                       seed: int = 0, shuffle_buffer_size: int = 2048) -> tf.data.Dataset:
    """Endless shuffled batches of log-mels ``[batch, frames, mels]`` from every split of a
    records folder (noise recordings ingested with the same front end); labels are ignored.

    Raises:
        ValueError: no manifest, no examples, or log-mels of another shape.
    """
    manifest = read_manifest(records_dir)
    shape = tuple(manifest["feature"]["shape"])
    if shape != tuple(logmel_shape):
        raise ValueError(
            f"The background records hold log-mels of shape {list(shape)}, the training "
            f"records {list(logmel_shape)}: ingest the noise with the same audio and front-end "
            f"settings. Received: background_dir={str(records_dir)!r}")
    files = [path for split in manifest["splits"]
             for path in shard_paths(records_dir, manifest, split)]
    if not files:
        raise ValueError(f"The background records have no examples. "
                         f"Received: background_dir={str(records_dir)!r}")
    num_classes = len(manifest["labels"])
    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).repeat()
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.map(
        lambda serialized: records.parse_example(serialized, num_classes, shape)[records.LOGMEL],
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return dataset.shuffle(shuffle_buffer_size, seed=seed).batch(batch_size, drop_remainder=True)


def distributed_dataset(strategy: tf.distribute.Strategy, records_dir: str | Path,
                        manifest: dict, split: str, global_batch_size: int, training: bool,
                        seed: int = 0, shuffle_buffer_size: int = 2048,
                        augment: AugmentConfig | None = None):
    """``make_dataset`` per input pipeline through ``distribute_datasets_from_function``."""

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        return make_dataset(records_dir, manifest, split, batch_size, training, seed,
                            shuffle_buffer_size, input_context, augment)

    return strategy.distribute_datasets_from_function(dataset_fn)
