"""TFRecord shards -> batches of ``(logmel [batch, frames, mels], labels [batch, classes])``.

Training input: shuffle the shard files, give each input pipeline (one per worker) its own
files, interleave reads from several shards at once, parse in parallel, shuffle examples,
batch by the per-replica batch size and prefetch. Evaluation input keeps the record order so
predictions line up with labels.

Example:
    >>> manifest = read_manifest("records/demo")
    >>> ds = make_dataset("records/demo", manifest, "valid", batch_size=32)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfbird import config, records
from tfbird.records import read_manifest
from tfbird.augment import augment_batch, augment_waveform_batch
from tfbird.config import AugmentConfig
from tfbird.frontend import LogMelSpectrogram, build_frontend


def shard_paths(records_dir: str | Path, manifest: dict, split: str) -> list[str]:
    """Paths of a split's shards that hold at least one example."""
    if split not in manifest["splits"]:
        raise ValueError(f"No split {split!r} in the manifest; it has "
                         f"{sorted(manifest['splits'])}. Received: split={split!r}")
    return [str(Path(records_dir) / shard["file"])
            for shard in manifest["splits"][split]["shards"] if shard["examples"] > 0]


@dataclasses.dataclass(frozen=True)
class ReadSpec:
    """How ``make_dataset`` reads a split: everything but the folder, split and batch size.

    Attributes:
        training: shuffle files and examples, repeat forever and drop the last partial batch.
        seed: shuffling (and augmentation) seed.
        shuffle_buffer_size: examples in the shuffle buffer (training only).
        augment: train-only augmentation of each batch (ignored when not ``training``).
        task: ``"multilabel"`` or ``"multiclass"``: the targets (``read_targets``).
        secondary_label_weight: the multilabel target of a secondary label.
        data_service: ``grpc://HOST:PORT`` of a tf.data service dispatcher: its workers run
            the pipeline (reading the shards at the same paths) and each epoch's files are
            split among them (``processing_mode="distributed_epoch"``); ``None`` runs it here.
        frontend_in_model: yield waveforms ``[batch, samples]`` (PCM records only) for a
            model that computes its log-mels (``model.frontend_in_model``); the train-only
            augmentation is then ``augment_waveform_batch``. Otherwise PCM records go through
            the manifest's front end here, and batches are log-mels whatever the store.
        sampling: ``"natural"`` (records as they come) or ``"balanced"`` (training only:
            ``sample_classes_evenly``).
    """

    training: bool = False
    seed: int = 0
    shuffle_buffer_size: int = 2048
    augment: AugmentConfig | None = None
    task: str = "multilabel"
    secondary_label_weight: float = 1.0
    data_service: str | None = None
    frontend_in_model: bool = False
    sampling: str = "natural"

    @classmethod
    def of_training(cls, cfg: config.Config) -> ReadSpec:
        """The training read of ``cfg`` (``training.train`` and ``bench`` read with it)."""
        return cls(training=True, seed=cfg.train.seed,
                   shuffle_buffer_size=cfg.data.shuffle_buffer_size, augment=cfg.augment,
                   task=cfg.model.task, secondary_label_weight=cfg.data.secondary_label_weight,
                   data_service=cfg.train.data_service,
                   frontend_in_model=cfg.model.frontend_in_model, sampling=cfg.data.sampling)

    def for_validation(self) -> ReadSpec:
        """The same read of the validation split: in order, not augmented, served here."""
        return dataclasses.replace(self, training=False, augment=None, data_service=None,
                                   sampling="natural")


def make_dataset(records_dir: str | Path, manifest: dict, split: str, batch_size: int,
                 spec: ReadSpec = ReadSpec(),
                 input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Reads one split as batches of ``(logmel, targets)``.

    Args:
        records_dir: folder with the shards and ``manifest.json``.
        manifest: the parsed manifest (labels, feature shape, shards).
        split: ``"train"`` or ``"valid"``.
        batch_size: examples per batch of this pipeline (per replica under a strategy).
        spec: how to read it (``ReadSpec``); the default reads in order, for evaluation.
        input_context: from ``distribute_datasets_from_function``; each input pipeline (one
            per worker) then reads its own subset of the files, or of each file's records
            when there are fewer files than pipelines.

    Returns:
        A ``tf.data.Dataset`` of ``(float32 [batch, frames, mels], float32 [batch, classes])``.

    Example:
        >>> make_dataset("records/demo", manifest, "train", 32, ReadSpec(training=True))
    """
    files = shard_paths(records_dir, manifest, split)
    if not files:
        raise ValueError(f"The {split!r} split of {records_dir} has no examples. "
                         f"Received: split={split!r}")
    num_classes = len(manifest["labels"])
    store = manifest.get("store", records.LOGMEL)
    shape = input_shape(manifest, spec.frontend_in_model)  # Checks the store.
    to_logmel = build_manifest_frontend(manifest) if store == records.PCM and not \
        spec.frontend_in_model else None

    dataset = read_shards(files, spec, input_context)
    if spec.training and spec.sampling == "balanced":
        dataset = sample_classes_evenly(dataset, files, num_classes, spec.seed)

    def parse(serialized):
        example = records.parse_example(serialized, num_classes,
                                        tuple(manifest["feature"]["shape"]), store)
        return example[store], read_targets(example[records.LABELS], example[records.SECONDARY],
                                            spec.task, spec.secondary_label_weight)

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=not spec.training)
    if spec.training:
        dataset = dataset.shuffle(spec.shuffle_buffer_size, seed=spec.seed)
    dataset = dataset.batch(batch_size, drop_remainder=spec.training)
    if to_logmel is not None:  # PCM records: the same front end as ingest, on whole batches.
        dataset = dataset.map(lambda x, y: (to_logmel(x), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    if spec.training and spec.augment is not None:
        dataset = augment_batches(dataset, spec, shape, batch_size)
    if spec.data_service:
        # Each file goes to one service worker per epoch ("distributed_epoch"): with
        # "parallel_epochs" every worker would make the same seeded stream.
        dataset = dataset.apply(tf.data.experimental.service.distribute(
            processing_mode="distributed_epoch", service=spec.data_service))
    return dataset.prefetch(tf.data.AUTOTUNE)


def read_shards(files: list[str], spec: ReadSpec,
                input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    """The serialized records of ``files``: shuffled by file (training), this pipeline's
    share of them, repeated (training) and interleaved from several shards at once."""
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if spec.training:
        # Shuffle whole files first: cheap, and it varies which shards are read together.
        dataset = dataset.shuffle(len(files), seed=spec.seed, reshuffle_each_iteration=True)
    pipelines, pipeline_id = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                              if input_context is not None else (1, 0))
    shard_records = pipelines > len(files)
    if pipelines > 1 and not shard_records:
        # One pipeline per worker: shard by file so workers never read the same examples.
        dataset = dataset.shard(pipelines, pipeline_id)

    def read_file(path):
        file_records = tf.data.TFRecordDataset(path)
        if shard_records:
            # Fewer files than pipelines (tf.data's AutoShardPolicy.DATA): every pipeline
            # reads every file and keeps its share of each file's records.
            return file_records.shard(pipelines, pipeline_id)
        return file_records

    if spec.training:
        dataset = dataset.repeat()
    # Read several shards at once so one slow file does not stall the pipeline.
    return dataset.interleave(
        read_file, cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not spec.training)


def augment_batches(dataset: tf.data.Dataset, spec: ReadSpec, shape: tuple[int, ...],
                    batch_size: int) -> tf.data.Dataset:
    """``spec.augment`` applied to each training batch (log-mels, or waveforms with
    ``spec.frontend_in_model``), with its background batches when it names a folder."""
    # One stateless seed per batch from a seeded stream: reproducible augmentation.
    seeds = tf.data.Dataset.random(seed=spec.seed).batch(2)
    inputs = [dataset, seeds]
    if spec.augment.background_dir:
        inputs.append(background_dataset(spec.augment.background_dir, shape, batch_size,
                                         spec.seed, spec.shuffle_buffer_size,
                                         spec.frontend_in_model))
    augment_fn = augment_waveform_batch if spec.frontend_in_model else augment_batch
    return tf.data.Dataset.zip(*inputs).map(
        lambda batch, seed_pair, *background: augment_fn(*batch, spec.augment, seed_pair,
                                                         *background),
        num_parallel_calls=tf.data.AUTOTUNE)


def read_targets(labels: tf.Tensor, secondary: tf.Tensor, task: str = "multilabel",
                 secondary_label_weight: float = 1.0) -> tf.Tensor:
    """The training target of a record from its multi-hot ``labels`` and ``secondary_labels``.

    - ``multilabel``: ``labels`` with each secondary label at ``secondary_label_weight``.
    - ``multiclass``: a distribution over the classes: the primary label one-hot (several
      primary labels, as a Raven window overlapping boxes of two species, share it equally).
      A window without any (a negative or noise recording, a Raven window without a box)
      gets the uniform distribution: the softmax learns to be unsure there, and the metrics
      count it as a negative of every class (``positive_targets``).

    Args:
        labels: float ``[..., classes]``.
        secondary: float ``[..., classes]``, the positives of ``labels`` that are secondary.
        task: ``"multilabel"`` or ``"multiclass"``.
        secondary_label_weight: in [0, 1]; multilabel only.

    Example:
        >>> read_targets([[1., 1., 0.]], [[0., 1., 0.]], "multilabel", 0.5).numpy()
        array([[1. , 0.5, 0. ]], dtype=float32)
        >>> read_targets([[0., 0., 0.]], [[0., 0., 0.]], "multiclass").numpy()
        array([[0.33333334, 0.33333334, 0.33333334]], dtype=float32)
    """
    labels = tf.convert_to_tensor(labels, tf.float32)
    secondary = tf.convert_to_tensor(secondary, tf.float32)
    if task == "multiclass":
        primary = labels - secondary
        count = tf.reduce_sum(primary, axis=-1, keepdims=True)
        uniform = tf.ones_like(primary) / tf.cast(tf.shape(primary)[-1], tf.float32)
        return tf.where(count > 0, primary / tf.maximum(count, 1.0), uniform)
    if task != "multilabel":
        raise ValueError(f"task must be 'multilabel' or 'multiclass'. Received: task={task!r}")
    return labels - (1.0 - secondary_label_weight) * secondary


def positive_targets(targets: tf.Tensor, task: str = "multilabel") -> tf.Tensor:
    """float 0/1 ``[..., classes]``: the classes a ``read_targets`` target marks as present.

    ``multilabel``: every positive target (a secondary label too). ``multiclass``: the targets
    above the row's smallest, so the uniform target of a window without a class has none.
    """
    targets = tf.convert_to_tensor(targets, tf.float32)
    if task == "multiclass":
        return tf.cast(targets > tf.reduce_min(targets, axis=-1, keepdims=True), tf.float32)
    return tf.cast(targets > 0, tf.float32)


def background_dataset(records_dir: str | Path, logmel_shape: tuple[int, ...], batch_size: int,
                       seed: int = 0, shuffle_buffer_size: int = 2048,
                       waveform: bool = False) -> tf.data.Dataset:
    """Endless shuffled batches of log-mels ``[batch, frames, mels]`` (or with ``waveform``
    of waveforms ``[batch, samples]``, from PCM records) from every split of a records folder
    (noise recordings ingested with the same audio and front-end settings); labels are
    ignored. PCM records give log-mels through their manifest's front end.

    Raises:
        ValueError: no manifest, no examples, or inputs of another shape.
    """
    manifest = read_manifest(records_dir)
    store = manifest.get("store", records.LOGMEL)
    shape = input_shape(manifest, waveform)
    if shape != tuple(logmel_shape):
        raise ValueError(
            f"The background records give inputs of shape {list(shape)}, the training "
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
    stored_shape = tuple(manifest["feature"]["shape"])
    dataset = dataset.map(
        lambda serialized: records.parse_example(serialized, num_classes, stored_shape,
                                                 store)[store],
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed).batch(batch_size,
                                                                    drop_remainder=True)
    if store == records.PCM and not waveform:
        dataset = dataset.map(build_manifest_frontend(manifest),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset


def primary_class(serialized: tf.Tensor, num_classes: int) -> tf.Tensor:
    """The class a record is drawn for by balanced sampling: the first of its primary labels
    (its ``labels`` that are not ``secondary_labels``), or ``num_classes`` ("none": a
    negative, noise, or a Raven window without a box)."""
    description = {key: value for key, value in records.feature_description(num_classes).items()
                   if key in (records.LABELS, records.SECONDARY)}
    example = tf.io.parse_single_example(serialized, description)
    primary = example[records.LABELS] * (1.0 - example[records.SECONDARY])
    return tf.where(tf.reduce_max(primary) > 0, tf.argmax(primary, output_type=tf.int32),
                    num_classes)


def primary_class_counts(files: list[str], num_classes: int) -> np.ndarray:
    """Records per ``primary_class`` (``[num_classes + 1]``, the last is "none") in
    ``files``, from one pass that parses only the labels."""
    classes = tf.data.TFRecordDataset(files).map(
        lambda serialized: primary_class(serialized, num_classes),
        num_parallel_calls=tf.data.AUTOTUNE)
    found = np.fromiter(classes.as_numpy_iterator(), np.int64)
    return np.bincount(found, minlength=num_classes + 1)


def sample_classes_evenly(serialized: tf.data.Dataset, files: list[str], num_classes: int,
                          seed: int = 0) -> tf.data.Dataset:
    """``data.sampling: balanced``: draws each class (by ``primary_class``, with "none" as
    one more class) equally often from an endless stream of serialized records.

    One filtered dataset per class present in ``files`` (counted by ``primary_class_counts``:
    a filter that never matches would block), mixed by ``sample_from_datasets`` with equal
    weights. Each class's dataset reads the whole stream, so reading costs grow with the
    number of classes present; rare classes repeat more often than common ones within an
    epoch of steps.
    """
    present = np.flatnonzero(primary_class_counts(files, num_classes))
    per_class = [serialized.filter(
        lambda record, k=int(k): tf.equal(primary_class(record, num_classes), k))
        for k in present]
    return tf.data.Dataset.sample_from_datasets(per_class, weights=[1.0 / len(present)] * len(
        present), seed=seed)


def input_shape(manifest: dict, waveform: bool = False) -> tuple[int, ...]:
    """The shape of one model input read from these records: the log-mel ``(frames, mels)``
    (of log-mel or PCM records), with ``waveform`` the PCM window ``(samples,)``, or the
    embedding ``(dim,)`` of embedding records.

    Raises:
        ValueError: ``waveform`` with records that hold log-mels.
    """
    store = manifest.get("store", records.LOGMEL)
    if waveform and store != records.PCM:
        raise ValueError("The front end can only run in the model on records that hold PCM "
                         f"(tfbird ingest --store pcm). Received: store={store!r}")
    if waveform or store in (records.LOGMEL, records.EMBEDDING):
        return tuple(manifest["feature"]["shape"])
    return tuple(manifest["logmel_shape"])


def build_manifest_frontend(manifest: dict) -> LogMelSpectrogram:
    """The front end the records were made with (the manifest's audio and front-end
    settings): PCM windows ``[batch, samples]`` -> log-mels ``[batch, frames, mels]``."""
    cfg = config.from_dict({"audio": manifest["audio"], "frontend": manifest["frontend"]})
    return build_frontend(cfg.audio, cfg.frontend)


def distributed_dataset(strategy: tf.distribute.Strategy, records_dir: str | Path,
                        manifest: dict, split: str, global_batch_size: int,
                        spec: ReadSpec = ReadSpec()):
    """``make_dataset`` per input pipeline through ``distribute_datasets_from_function``.

    Evaluation batches (not ``spec.training``) come as ``(x, targets, sample_weight)``
    through ``pad_to_full_steps``, so every replica gets a full batch at every step.
    """

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        dataset = make_dataset(records_dir, manifest, split, batch_size, spec, input_context)
        if spec.training:
            return dataset
        replicas_per_pipeline = (input_context.num_replicas_in_sync
                                 // input_context.num_input_pipelines)
        return pad_to_full_steps(dataset, batch_size, replicas_per_pipeline)

    return strategy.distribute_datasets_from_function(dataset_fn)


def pad_to_full_steps(dataset: tf.data.Dataset, batch_size: int,
                      replicas_per_pipeline: int = 1) -> tf.data.Dataset:
    """Batches ``(x, targets)`` of at most ``batch_size`` as ``(x, targets, sample_weight)``
    in which every batch is full and the batches come in whole steps of
    ``replicas_per_pipeline``: the last partial batch is padded with copies of its first
    example and filler batches are added, all with ``sample_weight`` 0.

    Under a distribution strategy, a split that does not fill its last step would otherwise
    leave a replica with an empty batch, which oneDNN's batch norm cannot run. The weight
    keeps the padding out of the metrics (ROC-AUC counts weighted examples); a ``val_loss``
    averaged over the batch counts it as zero-loss examples on the last step only.

    Example:
        >>> batches = tf.data.Dataset.range(5).map(lambda i: (float(i), 0.0)).batch(2)
        >>> [w.tolist() for _, _, w in pad_to_full_steps(batches, 2, 2).as_numpy_iterator()]
        [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    """

    def pad_batch(x, targets):
        real = tf.shape(x)[0]
        missing = batch_size - real
        weights = tf.concat([tf.ones([real]), tf.zeros([missing])], axis=0)

        def pad(tensor):
            first = tf.repeat(tensor[:1], missing, axis=0)
            return tf.ensure_shape(tf.concat([tensor, first], axis=0),
                                   [batch_size, *tensor.shape[1:]])

        return pad(x), pad(targets), tf.ensure_shape(weights, [batch_size])

    dataset = dataset.map(pad_batch)
    if replicas_per_pipeline > 1:
        # n batches and r - 1 fillers, in groups of r without the last partial group: the
        # n batches followed by fillers up to the next multiple of r.
        fillers = dataset.take(1).map(lambda x, targets, weights: (x, targets, 0.0 * weights))
        dataset = dataset.concatenate(fillers.repeat(replicas_per_pipeline - 1))
        dataset = dataset.batch(replicas_per_pipeline, drop_remainder=True).unbatch()
    return dataset.prefetch(tf.data.AUTOTUNE)
