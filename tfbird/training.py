"""Training: model and optimiser in the strategy's scope (``tfbird.distribute``), ``fit``,
checkpoints, logs and scores.

A run folder ``runs/<timestamp>/`` receives:

- ``config.yaml`` (the resolved config), ``labels.txt`` and ``environment.json`` (git commit
  and package versions);
- ``checkpoints/last.keras`` (every epoch) and ``model.keras`` (the epoch with the best
  validation ROC-AUC, or with ``train.model_selection: last`` the final weights): the
  architecture and weights without the optimizer's state (``inference_model``);
- ``logs/`` for TensorBoard (with the learning rate, a few augmented training inputs as
  images, each class's validation ROC-AUC of ``model.keras`` at the end, and profiler traces
  when ``train.profile_batch`` is set) and ``training_log.csv`` (one row per epoch);
- ``backup/`` while training runs: ``keras.callbacks.BackupAndRestore`` state at the end of
  each epoch, the only checkpoint with the optimizer's state. Rerunning the same command
  with the same run folder after a crash continues from the last finished epoch; the folder
  is deleted when training ends;
- ``metrics.json``: ``macro_roc_auc``, ``padded_cmap`` and ``row_f1`` of ``model.keras`` on
  the validation split (and ``top1_accuracy`` for ``model.task: multiclass``).

With ``train.freeze_backbone_epochs``, ``fit`` runs twice: see ``fit_in_phases``.

Under ``train.strategy: multiworker`` only the chief (worker 0) writes this folder; the other
workers write their checkpoints and logs to a temporary folder and their backup to
``backup-worker<i>/``.

Example:
    >>> run_dir, scores = train(cfg, records_dir="records/demo")
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import scipy.special
import tensorflow as tf
from tensorflow.core.util import event_pb2

from tfbird import config, dataset, metrics, records, statistics_head
from tfbird import labels as labels_lib
from tfbird.artifacts import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TRAINING_LOG_FILE,
    make_run_dir,
    write_atomically,
    write_environment,
    write_metrics,
)
from tfbird.distribute import make_strategy, worker_index
from tfbird.model import (
    build_classifier,
    build_embedding_head,
    build_waveform_classifier,
    logmel_classifier,
    sed_time_steps,
    set_backbone_trainable,
)
from tfbird.records import read_manifest

log = logging.getLogger(__name__)

BACKUP_DIR = "backup"
FROZEN_BACKUP_DIR = "frozen"  # inside the backup folder: the frozen-backbone phase's backup
BACKUP_METADATA = "training_metadata.json"  # BackupAndRestore's epoch count
# Fewer framewise steps than this and the sed head cannot place calls (README, Heads).
MIN_SED_TIME_STEPS = 4
LOGS_DIR = "logs"  # TensorBoard
INPUT_IMAGES = 4  # augmented training inputs shown in TensorBoard


def build_optimizer(train_cfg: config.TrainConfig, steps_per_epoch: int,
                    epochs: int | None = None) -> keras.optimizers.Optimizer:
    """AdamW with linear warmup then cosine decay over ``epochs`` (default
    ``train_cfg.epochs``); no weight decay on biases and norms; each gradient clipped to
    ``train_cfg.clipnorm`` when set; with ``train_cfg.ema_momentum``, a moving average of
    the weights that ``fit`` swaps in when it ends.

    Raises:
        ValueError: ``clipnorm`` under a strategy with several replicas. Keras 3 (TensorFlow
            backend) clips each replica's gradient before summing them, so the step would
            not be the one a single device takes on the same global batch.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if train_cfg.clipnorm is not None and replicas > 1:
        raise ValueError(
            f"train.clipnorm with {replicas} replicas: Keras clips each replica's gradient "
            f"before they are summed, which is not clipping the batch's gradient. Train on "
            f"one device (train.strategy: default) or drop train.clipnorm. "
            f"Received: clipnorm={train_cfg.clipnorm}")
    total_steps = (epochs or train_cfg.epochs) * steps_per_epoch
    warmup_steps = min(int(train_cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=train_cfg.learning_rate / 100 if warmup_steps else train_cfg.learning_rate,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=train_cfg.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps, alpha=0.01)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                       weight_decay=train_cfg.weight_decay,
                                       clipnorm=train_cfg.clipnorm,
                                       use_ema=train_cfg.ema_momentum is not None,
                                       ema_momentum=train_cfg.ema_momentum or 0.99)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def build_loss(train_cfg: config.TrainConfig, task: str = "multilabel",
               class_weights: np.ndarray | None = None) -> keras.losses.Loss:
    """On logits, with ``train_cfg.label_smoothing``. ``multilabel``: ``bce`` is binary
    cross-entropy, ``focal`` binary focal cross-entropy. ``multiclass``: their categorical
    (softmax) versions. With ``class_weights`` ``[classes]``, a ``ClassWeightedLoss``."""
    if class_weights is not None:
        return ClassWeightedLoss(build_loss(train_cfg, task), class_weights, task)
    smoothing = train_cfg.label_smoothing
    if task == "multiclass":
        if train_cfg.loss == "focal":
            return keras.losses.CategoricalFocalCrossentropy(
                from_logits=True, gamma=train_cfg.focal_gamma, label_smoothing=smoothing)
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    if train_cfg.loss == "focal":
        return keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=train_cfg.focal_gamma,
                                                    label_smoothing=smoothing)
    return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing)


def balanced_class_weights(class_counts: list[int], num_examples: int,
                           clip: tuple[float, float] = (0.1, 10.0)) -> np.ndarray:
    """scikit-learn's "balanced" weights ``examples / (classes * positives)`` per class,
    clipped to ``clip``; a class without positives gets 1 (``train.class_weighting``).

    Example:
        >>> balanced_class_weights([90, 10], 100)
        array([0.5555556, 5.       ], dtype=float32)
    """
    counts = np.asarray(class_counts, np.float64)
    weights = np.where(counts > 0, num_examples / (len(counts) * np.maximum(counts, 1)), 1.0)
    return np.clip(weights, *clip).astype(np.float32)


@keras.saving.register_keras_serializable(package="tfbird")
class ClassWeightedLoss(keras.losses.Loss):
    """A loss with a weight per class.

    ``multilabel``: ``loss`` (BCE or focal, elementwise) times ``class_weights``, averaged
    over the classes. ``multiclass``: each example's ``loss`` times the weight of its target
    (``sum(target * class_weights)``).

    Args:
        loss: the unweighted ``keras.losses.Loss`` (from ``build_loss``).
        class_weights: ``[classes]`` floats (``balanced_class_weights``).
        task: ``"multilabel"`` or ``"multiclass"``.
    """

    def __init__(self, loss, class_weights, task: str = "multilabel", **kwargs):
        kwargs.setdefault("name", "class_weighted_" + (loss.name if hasattr(loss, "name")
                                                        else "loss"))
        super().__init__(**kwargs)
        self.loss = keras.losses.deserialize(loss) if isinstance(loss, dict) else loss
        self.class_weights = [float(w) for w in class_weights]
        self.task = task

    def call(self, y_true, y_pred):
        weights = keras.ops.convert_to_tensor(self.class_weights, "float32")
        y_true = keras.ops.cast(y_true, "float32")
        if self.task == "multiclass":
            return self.loss.call(y_true, y_pred) * keras.ops.sum(y_true * weights, axis=-1)
        # A trailing axis of 1: the binary losses average over it, giving one term per class.
        per_class = self.loss.call(y_true[..., None], y_pred[..., None])
        return keras.ops.mean(per_class * weights, axis=-1)

    def get_config(self):
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss),
                "class_weights": self.class_weights, "task": self.task}


@keras.saving.register_keras_serializable(package="tfbird")
class SoftmaxROCAUC(keras.metrics.AUC):
    """``AUC(multi_label=True)`` of a multiclass model: its softmax probabilities against
    the classes ``dataset.positive_targets`` marks (the uniform target of a window without a
    class marks none)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(dataset.positive_targets(y_true, "multiclass"),
                             keras.ops.softmax(y_pred), sample_weight)


def compile_classifier(model: keras.Model, train_cfg: config.TrainConfig,
                       steps_per_epoch: int, epochs: int | None = None,
                       task: str = "multilabel",
                       class_weights: np.ndarray | None = None) -> None:
    """Compiles with ``build_optimizer`` (its schedule over ``epochs``, default
    ``train_cfg.epochs``), ``build_loss`` and the per-class ROC-AUC metric ``roc_auc``
    (sigmoid, or softmax for ``multiclass``). Call it in the strategy's scope."""
    auc = (SoftmaxROCAUC(multi_label=True, name="roc_auc") if task == "multiclass"
           else keras.metrics.AUC(multi_label=True, from_logits=True, name="roc_auc"))
    model.compile(
        optimizer=build_optimizer(train_cfg, steps_per_epoch, epochs),
        loss=build_loss(train_cfg, task, class_weights),
        metrics=[auc],
        jit_compile=checked_jit_compile(train_cfg.jit_compile))


def checked_jit_compile(jit_compile: bool | str) -> bool | str:
    """``train.jit_compile`` for ``model.compile``.

    Raises:
        ValueError: ``True`` in a distribution strategy's scope. Keras compiles the whole
            distributed step with XLA, which then fails to reach the variables of the other
            replicas' devices (measured with 2 mirrored CPU replicas, Keras 3.15).
    """
    if jit_compile is True and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
        raise ValueError(
            f"train.jit_compile: true under {type(strategy).__name__}: Keras would compile the "
            f"whole distributed step with XLA, which cannot reach the variables mirrored on "
            f"the other replicas' devices. Use train.strategy: default, or "
            f"train.jit_compile: auto (Keras then leaves XLA off). Received: jit_compile=True")
    return jit_compile


@contextlib.contextmanager
def precision_policy(mixed_precision: str):
    """Keras' global dtype policy set to ``mixed_precision`` (``"none"``: float32) while
    building a model; the model keeps it, and ``compile`` then wraps the optimizer in a
    ``LossScaleOptimizer`` for ``mixed_float16``."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(
        "float32" if mixed_precision == "none" else mixed_precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def configure_determinism(train_cfg: config.TrainConfig) -> None:
    """Seeds Python, NumPy and TensorFlow; with ``train.deterministic`` also makes every op
    deterministic (``tf.config.experimental.enable_op_determinism``)."""
    keras.utils.set_random_seed(train_cfg.seed)
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


BACKUP_WEIGHTS = "latest.weights.h5"  # BackupAndRestore's weights
PREVIOUS_SUFFIX = ".bkp"  # double_checkpoint's copy of the state before the last save
DELETED_BACKUP_DIR = BACKUP_DIR + ".deleted"  # a backup being removed (remove_backup)


def read_backup_epoch(weights_path: Path, metadata_path: Path) -> int | None:
    """The epochs done in one ``BackupAndRestore`` state (weights and metadata), or ``None``
    when that state would not restore what its metadata says.

    ``BackupAndRestore._save_model`` writes the weights, then the metadata, in place: a kill
    in between leaves a metadata file older than its weights (the weights of the next epoch
    with the previous epoch count), or truncated files. Such a state is not trusted.
    """
    import h5py

    try:
        epoch = int(json.loads(metadata_path.read_text())["epoch"])
        with h5py.File(weights_path, "r"):
            pass
        written_in_order = metadata_path.stat().st_mtime_ns >= weights_path.stat().st_mtime_ns
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch if written_in_order else None


def replace_atomically(source: Path, target: Path) -> None:
    """Copies ``source`` over ``target`` through a temporary file: ``target`` is whole."""
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def restorable_backup_epoch(backup_dir: Path) -> int:
    """Makes ``backup_dir``'s latest state the one ``BackupAndRestore`` will restore and
    returns its epochs done (0 without a usable state, whose files are then removed).

    With ``double_checkpoint=True``, Keras falls back to the previous state (``*.bkp``) only
    when the latest weights fail to load, and then restores the previous epoch count, which
    the latest metadata does not show. So the state to restore is chosen here, the same way
    for the CSV log and for Keras: the latest state if it is whole and consistent, else the
    previous one, copied over the latest before ``fit`` starts.
    """
    weights, metadata = backup_dir / BACKUP_WEIGHTS, backup_dir / BACKUP_METADATA
    previous_weights = weights.with_name(weights.name + PREVIOUS_SUFFIX)
    previous_metadata = metadata.with_name(metadata.name + PREVIOUS_SUFFIX)
    epoch = read_backup_epoch(weights, metadata)
    if epoch is not None:
        return epoch
    epoch = read_backup_epoch(previous_weights, previous_metadata)
    if epoch is not None:
        log.warning("The latest backup in %s is incomplete (killed while saving); resuming "
                    "from the previous one, after epoch %d.", backup_dir, epoch)
        replace_atomically(previous_weights, weights)
        replace_atomically(previous_metadata, metadata)
        return epoch
    for path in (metadata, weights, previous_metadata, previous_weights):
        path.unlink(missing_ok=True)  # Metadata first: without it nothing is restored.
    return 0


def remove_backup(backup_dir: Path) -> None:
    """Deletes a backup folder at once: renamed first, so a kill while deleting leaves either
    the whole backup or none (``shutil.rmtree`` alone may leave the epoch count without its
    weights, which Keras would restore as a finished run with untrained weights)."""
    deleted = backup_dir.with_name(backup_dir.name + ".deleted")
    shutil.rmtree(deleted, ignore_errors=True)
    if backup_dir.is_dir():
        os.replace(backup_dir, deleted)
    shutil.rmtree(deleted, ignore_errors=True)


def finished_log_rows(log_path: Path, epochs_done: int) -> tuple[list[str], list[dict]]:
    """``(fields, rows)`` of ``training_log.csv`` for epochs before ``epochs_done``; a row cut
    short by a kill (fewer fields than the header) is left out."""
    with log_path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        fields = reader.fieldnames or []
        rows = [row for row in reader
                if None not in row.values() and None not in row
                and row["epoch"].strip().isdigit() and int(row["epoch"]) < epochs_done]
    return fields, rows


def write_csv_atomically(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Writes a CSV through a temporary file renamed over ``path``."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


def drop_summaries_after(logs_dir: Path, backed_up_at_s: float) -> int:
    """Removes from the TensorBoard event files under ``logs_dir`` the summaries written
    after ``backed_up_at_s`` (a POSIX time); returns how many were removed.

    Those are the epochs a killed run finished after its last backup: the resumed run trains
    them again and writes them anew, so without this TensorBoard would show them twice. The
    time rule covers every tag, whatever its step counts (epochs, iterations). A record cut
    by the kill is dropped too. A file is rewritten to a temporary beside it and renamed over
    the original.
    """
    removed = 0
    for leftover in logs_dir.rglob("events.out.tfevents.*.trim.tmp"):
        leftover.unlink()  # Left by a trim that was itself killed.
    for path in sorted(logs_dir.rglob("events.out.tfevents.*")):
        if path.stat().st_mtime <= backed_up_at_s:
            continue  # Nothing in it is newer than the backup.
        records, whole = read_event_records(path)
        kept = [record for record in records
                if not is_summary_after(event_pb2.Event.FromString(record), backed_up_at_s)]
        dropped = len(records) - len(kept)
        if dropped or not whole:
            write_event_records(path, kept)
            removed += dropped
    if removed:
        log.info("Removed %d TensorBoard summaries of epochs after the backup from %s.",
                 removed, logs_dir)
    return removed


def read_event_records(path: Path) -> tuple[list[bytes], bool]:
    """The records of a TensorBoard event file, and whether it ended whole (a process killed
    while writing leaves a cut last record, which is left out)."""
    records = []
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records.append(record)
    except tf.errors.DataLossError:
        return records, False
    return records, True


def write_event_records(path: Path, records: list[bytes]) -> None:
    """Replaces the event file ``path`` by ``records``, through a temporary beside it (removed
    if the write fails), so the file is the old one or the new one, never part of either."""
    temporary = path.with_name(path.name + ".trim.tmp")
    try:
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for record in records:
                writer.write(record)
        os.replace(temporary, path)
    except (OSError, tf.errors.OpError):
        temporary.unlink(missing_ok=True)
        raise


def is_summary_after(event: event_pb2.Event, time_s: float) -> bool:
    """Whether ``event`` holds summaries written after ``time_s`` (a POSIX time)."""
    return event.HasField("summary") and event.wall_time > time_s


def resume_state(run_dir: Path) -> tuple[int, float | None]:
    """Prepares a run folder for ``BackupAndRestore``; returns ``(epochs done, best
    val_roc_auc so far)``.

    With a backup of ``k`` finished epochs (``restorable_backup_epoch``: the state Keras will
    restore), rows of ``training_log.csv`` for epoch ``k`` or later (written before a crash,
    but not backed up) are dropped, and so are their TensorBoard summaries
    (``drop_summaries_after``), so the epochs about to be rerun appear once. Without a
    backup, training starts again and so do the log and ``logs/``. The backup is the last
    phase's, or else the frozen-backbone phase's (``fit_in_phases``).
    """
    shutil.rmtree(run_dir / DELETED_BACKUP_DIR, ignore_errors=True)
    epochs_done = 0
    for backup_dir in (run_dir / BACKUP_DIR, run_dir / BACKUP_DIR / FROZEN_BACKUP_DIR):
        epochs_done = restorable_backup_epoch(backup_dir) if backup_dir.is_dir() else 0
        if epochs_done:
            break
    log_path = run_dir / TRAINING_LOG_FILE
    if not epochs_done:
        shutil.rmtree(run_dir / LOGS_DIR, ignore_errors=True)
        log_path.unlink(missing_ok=True)
        return 0, None
    drop_summaries_after(run_dir / LOGS_DIR, (backup_dir / BACKUP_METADATA).stat().st_mtime)
    if not log_path.is_file():
        return epochs_done, None
    fields, rows = finished_log_rows(log_path, epochs_done)
    write_csv_atomically(log_path, fields, rows)
    scores = [float(row["val_roc_auc"]) for row in rows if row.get("val_roc_auc")]
    scores = [score for score in scores if not math.isnan(score)]
    return epochs_done, max(scores) if scores else None


def train(cfg: config.Config, records_dir: str | Path, run_dir: str | Path | None = None,
          progress: bool = True, strategy: tf.distribute.Strategy | None = None,
          overwrite: bool = False) -> tuple[Path, dict]:
    """Trains on ``records_dir`` and scores the best checkpoint on the validation split.

    Args:
        cfg: model and training settings (``cfg.train.strategy`` picks the strategy).
        records_dir: output of ``tfbird ingest`` (shards + ``manifest.json``).
        run_dir: where to write the run; default ``<train.runs_dir>/<timestamp>``.
        progress: Keras progress bars.
        strategy: default ``make_strategy(cfg.train)``; pass one made before TensorFlow
            started when other TensorFlow work runs first in this process.
        overwrite: train from scratch in a ``run_dir`` that holds a finished run
            (``check_not_finished``; without it, that raises).

    Returns:
        ``(run_dir, scores)`` with the scores also in ``run_dir/metrics.json``. A
        ``multiworker`` worker other than the chief writes nothing there and returns
        ``(run_dir as given, {})``.
    """
    manifest = read_manifest(records_dir)
    labels = manifest["labels"]
    strategy = strategy or make_strategy(cfg.train)
    replicas = strategy.num_replicas_in_sync
    if cfg.train.global_batch_size % replicas:
        raise ValueError(
            f"train.global_batch_size must be divisible by the {replicas} replicas. "
            f"Received: global_batch_size={cfg.train.global_batch_size}")
    train_examples = manifest["splits"]["train"]["examples"]
    steps_per_epoch = train_examples // cfg.train.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"Fewer training examples ({train_examples}) than one global batch. "
            f"Received: global_batch_size={cfg.train.global_batch_size}")

    chief = strategy.extended.should_checkpoint  # False on multiworker's other workers.
    if chief:
        run_dir = Path(run_dir) if run_dir else make_run_dir(cfg.train.runs_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        check_not_finished(run_dir, overwrite)
        check_resumable(run_dir, cfg)
        config.save(cfg, run_dir / CONFIG_FILE)
        labels_lib.write_labels(labels, run_dir / LABELS_FILE)
        write_environment(run_dir / ENVIRONMENT_FILE)
        output_dir, backup_dir = run_dir, run_dir / BACKUP_DIR
        epochs_done, best_score = resume_state(run_dir)
    else:
        output_dir, backup_dir = worker_output_dirs(run_dir, worker_index(strategy))
        epochs_done, best_score = 0, None
    configure_determinism(cfg.train)
    log.info("Training on %d replica(s) (%s), %d steps per epoch, run folder %s%s",
             replicas, type(strategy).__name__, steps_per_epoch, run_dir,
             f"; resuming after epoch {epochs_done}" if epochs_done else "")

    with strategy.scope():
        with precision_policy(cfg.train.mixed_precision):
            model = build_model(cfg.model, len(labels), manifest)
            if cfg.model.frontend_in_model:  # Waveforms in: the log-mels run in the model.
                model = build_waveform_classifier(model, cfg.audio, cfg.frontend, cfg.augment)
    if cfg.model.head == "sed":
        log_sed_time_resolution(model, cfg.audio.window_s)

    read = dataset.ReadSpec.of_training(cfg)
    train_data = dataset.distributed_dataset(strategy, records_dir, manifest, "train",
                                             cfg.train.global_batch_size, read)
    valid_data = dataset.distributed_dataset(strategy, records_dir, manifest, "valid",
                                             cfg.train.global_batch_size, read.for_validation())
    if not epochs_done and not embedding_records(manifest):
        # A small shuffle buffer: a few examples, not a full buffer, read.
        images_read = dataclasses.replace(read, shuffle_buffer_size=16 * INPUT_IMAGES,
                                          data_service=None, frontend_in_model=False,
                                          sampling="natural")
        write_input_images(output_dir / LOGS_DIR / "train", labels, dataset.make_dataset(
            records_dir, manifest, "train", INPUT_IMAGES, images_read))
    # No validation_steps: Keras 3.15 then reads the validation set to its end with a fresh
    # iterator every epoch. With validation_steps, under a strategy, its symbolic build takes
    # one batch from the cached validation iterator, which the previous epoch left exhausted
    # (StopIteration at the second epoch). Reaching the end makes Keras warn "ran out of
    # data"; the training input repeats forever, so that warning can only be the validation's.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        fit_in_phases(model, strategy, cfg.train, output_dir, backup_dir,
                      resumed=epochs_done > 0, best_score=best_score, task=cfg.model.task,
                      x=train_data, class_weights=train_class_weights(cfg.train, manifest),
                      validation_data=valid_data, steps_per_epoch=steps_per_epoch,
                      shuffle=False,  # The input pipeline shuffles files and examples itself.
                      verbose=1 if progress else 2)
    if cfg.train.ema_momentum is not None:
        # fit ended by swapping in the averaged weights; the moving statistics are the raw ones'.
        reestimate_batch_norm(model, dataset.make_dataset(
            records_dir, manifest, "train", cfg.train.global_batch_size,
            dataclasses.replace(read, data_service=None)), steps_per_epoch)

    if not chief:
        remove_backup(backup_dir)
        shutil.rmtree(output_dir, ignore_errors=True)
        return run_dir and Path(run_dir), {}
    if cfg.train.model_selection == "last":
        save_model_atomically(inference_model(model), run_dir / MODEL_FILE)
    elif not (run_dir / MODEL_FILE).is_file():  # val_roc_auc never defined (no positives).
        log.warning("No epoch had a validation ROC-AUC; keeping the last epoch's model.")
        save_model_atomically(inference_model(model), run_dir / MODEL_FILE)
    best = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
    if cfg.model.statistics_weight and not statistics_head.has_statistics_head(
            logmel_classifier(best)):  # A rerun of a killed run may find it there already.
        best = with_statistics_head(best, cfg, records_dir, manifest)
        save_model_atomically(best, run_dir / MODEL_FILE)
    scores = evaluate(best, records_dir, manifest, cfg.train.global_batch_size,
                      task=cfg.model.task,
                      secondary_label_weight=cfg.data.secondary_label_weight,
                      log_dir=run_dir / LOGS_DIR / "validation", log_step=cfg.train.epochs)
    write_metrics(scores, run_dir / METRICS_FILE)
    remove_backup(backup_dir)  # Last: a run killed before this resumes, and scores again.
    return run_dir, scores


def reestimate_batch_norm(model: keras.Model, batches: tf.data.Dataset, steps: int) -> int:
    """Sets every trainable ``BatchNormalization``'s moving mean and variance of ``model`` to
    the average of its batch statistics over the first ``steps`` batches of ``batches``
    (``(inputs, targets, ...)``, as in training), the weights unchanged: the statistics of
    averaged weights (``train.ema_momentum``; Izmailov et al., 2018, SWA's ``bn_update``).

    Returns:
        The number of batches read.
    """
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    momenta = [norm.momentum for norm in norms]
    read = 0
    try:
        for batch in batches.take(steps):
            for norm in norms:  # moving = m * moving + (1 - m) * batch: a running average.
                norm.momentum = read / (read + 1)
            model(batch[0], training=True)
            read += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    log.info("Re-estimated the moving statistics of %d batch norms over %d batches",
             len(norms), read)
    return read


def with_statistics_head(model: keras.Model, cfg: config.Config, records_dir: str | Path,
                         manifest: dict) -> keras.Model:
    """``model`` with ``model.statistics_weight``'s regression fitted on the training records
    and fused into its log-mel classifier (``statistics_head.add_statistics_head``); a model
    with the front end inside keeps it (without the training-only augmentation)."""
    log.info("Fitting the log-mel statistics regression on the training records "
             "(model.statistics_weight=%s)", cfg.model.statistics_weight)
    fused = statistics_head.add_statistics_head(
        logmel_classifier(model), records_dir, manifest, cfg.model.statistics_weight,
        cfg.model.task, batch_size=cfg.train.global_batch_size,
        feature_names=cfg.model.statistics_features)
    if len(model.input_shape) == 2:  # [batch, samples]: the front end is in the model.
        return build_waveform_classifier(fused, cfg.audio, cfg.frontend)
    return fused


def embedding_records(manifest: dict) -> bool:
    """Whether the records hold a pretrained backbone's embeddings (not log-mels or PCM)."""
    return manifest.get("store") == records.EMBEDDING


def build_model(model_cfg: config.ModelConfig, num_classes: int, manifest: dict) -> keras.Model:
    """The model these records train: ``build_embedding_head`` on embedding records (whose
    backbone must be ``model.backbone``), else the log-mel ``build_classifier``.

    Raises:
        ValueError: records of another backbone than the config's.
    """
    recorded = manifest.get("backbone", {}).get("name")  # None: log-mel or PCM records
    wanted = model_cfg.backbone if model_cfg.backbone in config.EMBEDDING_BACKBONES else None
    if recorded != wanted:
        held = (f"{recorded} embeddings" if recorded
                else f"{manifest.get('store', records.LOGMEL)} records (for image backbones)")
        hint = (f"--set model.backbone={recorded}" if recorded
                else f"one of model.backbone {list(config.IMAGE_BACKBONES)}")
        raise ValueError(
            f"The records hold {held} but the config trains model.backbone "
            f"{model_cfg.backbone!r}: ingest again with this backbone, or use "
            f"{hint}. Received: backbone={model_cfg.backbone!r}")
    if embedding_records(manifest):
        return build_embedding_head(model_cfg, num_classes, manifest["feature"]["shape"][0])
    return build_classifier(model_cfg, num_classes, dataset.input_shape(manifest))


def worker_output_dirs(run_dir: str | Path | None, index: int) -> tuple[Path, Path]:
    """``(output_dir, backup_dir)`` of a multiworker worker that is not the chief.

    Keras' multi-worker pattern: every worker runs the same callbacks, but only the chief's
    outputs are kept; the others write theirs into a temporary folder, deleted at the end.
    A worker's ``BackupAndRestore`` state must outlive a crash, like the chief's, so it goes
    to ``<run_dir>/backup-worker<index>`` (removed when training ends).
    """
    output_dir = Path(tempfile.mkdtemp(prefix=f"tfbird-worker{index}-"))
    backup_parent = Path(run_dir) if run_dir else output_dir
    return output_dir, backup_parent / f"{BACKUP_DIR}-worker{index}"


def training_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a trained model and no backup of an unfinished run."""
    return ((run_dir / MODEL_FILE).is_file() or (run_dir / METRICS_FILE).is_file()) and not (
        run_dir / BACKUP_DIR).is_dir()


def check_not_finished(run_dir: Path, overwrite: bool = False) -> None:
    """Refuses to train again in a finished run folder unless ``overwrite``; with it,
    deletes the finished run's model and scores first. A folder with ``backup/`` (a killed
    run) is resumed instead, so it always passes.

    Raises:
        ValueError: a finished run and ``overwrite=False``.
    """
    if not training_finished(run_dir):
        return
    if not overwrite:
        raise ValueError(
            f"{run_dir} holds a finished run (its {MODEL_FILE} and {METRICS_FILE}); training "
            f"again would replace them. Use another --run-dir, or --overwrite to train from "
            f"scratch in this folder. Received: run_dir={str(run_dir)!r}")
    log.info("--overwrite: training again in %s, replacing its model and scores", run_dir)
    for name in (MODEL_FILE, METRICS_FILE, TRAINING_LOG_FILE):
        (run_dir / name).unlink(missing_ok=True)


def check_resumable(run_dir: Path, cfg: config.Config) -> None:
    """Raises when ``run_dir`` holds a backup made with another config (the weights or the
    schedule would not match)."""
    if not (run_dir / BACKUP_DIR).is_dir() or not (run_dir / CONFIG_FILE).is_file():
        return
    before, now = config.to_dict(config.load(run_dir / CONFIG_FILE)), config.to_dict(cfg)
    changed = [f"{section}.{key}" for section in now for key in now[section]
               if before.get(section, {}).get(key) != now[section][key]]
    if changed:
        raise ValueError(
            f"{run_dir} holds an unfinished run made with another config; resume it with the "
            f"same settings, or use another --run-dir. Received: changed={changed}")


def inference_model(model: keras.Model) -> keras.Model:
    """The same layers and weights as ``model``, uncompiled: saving it writes the
    architecture and weights without the optimizer's state (AdamW's two moments would make
    the file three times as large). Resuming reads ``BackupAndRestore``'s backup, the one
    checkpoint that keeps the optimizer. A model without symbolic inputs (a ``Sequential``
    that ``fit`` built; tfbird's models all start with ``keras.Input``) is returned as it is.
    """
    try:
        inputs, outputs = model.input, model.output
    except AttributeError:
        return model
    return keras.Model(inputs, outputs, name=model.name)


def partial_path(path: Path) -> Path:
    """Where a file is written before it is renamed to ``path``: ``model.keras`` ->
    ``model.partial.keras`` (Keras wants the ``.keras`` suffix)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """``model.save(path)`` through ``partial_path``: a kill while saving leaves the previous
    file (or none), never a truncated one that a rerun would keep as the best model."""
    model.save(partial_path(path))
    os.replace(partial_path(path), path)


class InferenceCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves ``inference_model`` of the trained model (no
    optimizer state) atomically (``save_model_atomically``); which epochs it saves is
    unchanged. The view is made when saving: a model ``fit`` builds on its first batch has
    no inputs before."""

    @property
    def model(self):
        return inference_model(super().model)

    def _get_file_path(self, epoch, batch, logs):
        return str(partial_path(super()._get_file_path(epoch, batch, logs)))

    def _save_model(self, epoch, batch, logs):
        super()._save_model(epoch, batch, logs)
        written = Path(self._get_file_path(epoch, batch, logs))
        if written.is_file():
            os.replace(written, super()._get_file_path(epoch, batch, logs))


class RunBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup, when deleted at the end of ``fit``, goes at once
    (``remove_backup``). A kept backup of a ``fit`` that early stopping ended counts all its
    epochs as done (``mark_fit_finished``), so a rerun does not train on past the stop."""

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            remove_backup(Path(self.backup_dir))
        elif self.model.stop_training:
            mark_fit_finished(Path(self.backup_dir), self.params["epochs"])


def mark_fit_finished(backup_dir: Path, end_epoch: int) -> None:
    """Rewrites a backup's epoch count (atomically, after its weights) as ``end_epoch``: the
    ``fit`` that made it has nothing left to train."""
    metadata = backup_dir / BACKUP_METADATA
    if not metadata.is_file():
        return
    state = json.loads(metadata.read_text())
    write_atomically(metadata, json.dumps({**state, "epoch": end_epoch}))


def training_callbacks(run_dir: Path, train_cfg: config.TrainConfig = config.TrainConfig(),
                       resumed: bool = False, best_score: float | None = None,
                       backup_dir: Path | None = None,
                       delete_backup: bool = True) -> list[keras.callbacks.Callback]:
    """Checkpoints, CSV log, TensorBoard, early stopping and the backup for resuming.

    Args:
        run_dir: the run folder.
        train_cfg: ``early_stopping_patience`` and ``profile_batch``.
        resumed: continuing a run from its backup: the CSV log is appended to.
        best_score: the best ``val_roc_auc`` before the backup, so ``model.keras`` is only
            replaced by a better epoch.
        backup_dir: ``BackupAndRestore``'s folder; default ``run_dir/backup``.
        delete_backup: delete the backup when ``fit`` ends (all but the last phase keep it).
    """
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    callbacks = [InferenceCheckpoint(run_dir / "checkpoints" / "last.keras")]
    if train_cfg.model_selection == "best":  # "last": train() saves the final weights.
        callbacks.append(InferenceCheckpoint(
            run_dir / MODEL_FILE, monitor="val_roc_auc", mode="max", save_best_only=True,
            initial_value_threshold=best_score))
    callbacks += [
        keras.callbacks.CSVLogger(run_dir / TRAINING_LOG_FILE, append=resumed),
        keras.callbacks.TensorBoard(log_dir=run_dir / LOGS_DIR,
                                    profile_batch=tuple(train_cfg.profile_batch or ()) or 0),
    ]
    if train_cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_roc_auc", mode="max", patience=train_cfg.early_stopping_patience))
    # Last: an epoch is backed up only after its checkpoints and log row are written.
    callbacks.append(RunBackup(backup_dir or run_dir / BACKUP_DIR, double_checkpoint=True,
                               delete_checkpoint=delete_backup))
    return callbacks


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs ``[first_epoch, end_epoch)`` trained with the backbone frozen or not."""

    first_epoch: int
    end_epoch: int
    backbone_trainable: bool


def training_phases(train_cfg: config.TrainConfig) -> list[Phase]:
    """The frozen-backbone phase (``train.freeze_backbone_epochs`` epochs, if any), then
    the phase that trains everything (the remaining epochs, if any).

    Example:
        >>> training_phases(config.TrainConfig(epochs=5, freeze_backbone_epochs=2))
        [Phase(first_epoch=0, end_epoch=2, backbone_trainable=False),
         Phase(first_epoch=2, end_epoch=5, backbone_trainable=True)]
    """
    frozen = train_cfg.freeze_backbone_epochs
    phases = [Phase(0, frozen, backbone_trainable=False)] if frozen else []
    if frozen < train_cfg.epochs:
        phases.append(Phase(frozen, train_cfg.epochs, backbone_trainable=True))
    return phases


def log_sed_time_resolution(model: keras.Model, window_s: float) -> None:
    """Logs the ``sed`` head's time steps; warns when they are too few to place calls."""
    steps = sed_time_steps(model)
    message = "The sed head scores %d time steps of %.2f s per %g-s window"
    if steps >= MIN_SED_TIME_STEPS:
        log.info(message + ".", steps, window_s / steps, window_s)
        return
    log.warning(message + ": too coarse to place calls in time. Use a taller "
                "model.image_size (one step per 32 rows), e.g. [128, 64] or [320, 32].",
                steps, window_s / steps, window_s)


def fit_in_phases(model: keras.Model, strategy: tf.distribute.Strategy,
                  train_cfg: config.TrainConfig, output_dir: Path, backup_dir: Path,
                  resumed: bool = False, best_score: float | None = None,
                  task: str = "multilabel", class_weights: np.ndarray | None = None,
                  **fit_kwargs) -> None:
    """``model.fit`` once per phase of ``training_phases``, each freshly compiled.

    Keras 3 needs a recompile after ``trainable`` changes, and a recompile makes new optimizer
    variables; each phase therefore has its own AdamW whose warmup and cosine decay span the
    phase's epochs. (Carrying Adam's state over would not help: the backbone's moments are
    zero after the frozen phase, and the bias correction, by then near 1, would make its
    first steps several times the learning rate.)

    Resuming: the last phase backs up into ``backup_dir``, the frozen phase into
    ``backup_dir/frozen``; both are kept (``train`` deletes them once the scores are written,
    so a run killed after its last epoch resumes with no epoch to train). A run killed in the last
    phase resumes from that phase's backup; killed before its first backup, the frozen phase
    is restored from its own (it then runs no epoch) and the last phase starts again. The
    best-model checkpoint and the CSV log continue across phases; early stopping and the
    profiler restart in each.

    Args:
        model: from ``build_classifier``, built in ``strategy``'s scope.
        strategy: compiling happens in its scope.
        train_cfg: epochs, ``freeze_backbone_epochs``, optimiser and callback settings.
        output_dir: where ``training_callbacks`` write (the run folder).
        backup_dir: the last phase's ``BackupAndRestore`` folder.
        resumed: a backup exists: the CSV log is appended to.
        best_score: the best ``val_roc_auc`` before the backup.
        task: ``model.task`` (loss and metric).
        class_weights: per-class loss weights (``train.class_weighting``), or ``None``.
        **fit_kwargs: the data and step counts, passed to each ``model.fit``.
    """
    phases = training_phases(train_cfg)
    for index, phase in enumerate(phases):
        last = index == len(phases) - 1
        if not last and (backup_dir / BACKUP_METADATA).is_file():
            continue  # The last phase's backup is newer than this phase's end.
        with strategy.scope():
            if train_cfg.freeze_backbone_epochs:
                set_backbone_trainable(model, phase.backbone_trainable)
            compile_classifier(model, train_cfg, fit_kwargs["steps_per_epoch"],
                               epochs=phase.end_epoch - phase.first_epoch, task=task,
                               class_weights=class_weights)
        # Keras keeps the epoch a BackupAndRestore restored (``_initial_epoch``) across fit
        # calls: clear it, so only this phase's own backup moves its first epoch.
        model._initial_epoch = None
        callbacks = training_callbacks(
            output_dir, train_cfg if index == 0 else dataclasses.replace(train_cfg,
                                                                         profile_batch=None),
            resumed=resumed, best_score=best_score,
            backup_dir=backup_dir if last else backup_dir / FROZEN_BACKUP_DIR,
            delete_backup=False)  # train() deletes it once the run's scores are written.
        model.fit(initial_epoch=phase.first_epoch, epochs=phase.end_epoch, callbacks=callbacks,
                  **fit_kwargs)
        resumed = True  # The next phase appends to the log and keeps the best score.
        best = next((c.best for c in callbacks
                     if isinstance(c, keras.callbacks.ModelCheckpoint) and c.save_best_only),
                    np.nan)
        best_score = float(best) if np.isfinite(best) else None


def train_class_weights(train_cfg: config.TrainConfig, manifest: dict) -> np.ndarray | None:
    """``balanced_class_weights`` of the training split's ``class_counts`` for
    ``train.class_weighting: balanced``; ``None`` for ``none``."""
    if train_cfg.class_weighting == "none":
        return None
    split = manifest["splits"]["train"]
    return balanced_class_weights([split["class_counts"][label] for label in manifest["labels"]],
                                  split["examples"])


def predict_split(model: keras.Model, records_dir: str | Path, manifest: dict, split: str,
                  batch_size: int, task: str = "multilabel",
                  secondary_label_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` of every example of a split, in record order.

    The labels are 0/1: the classes the training targets mark as present
    (``dataset.positive_targets``). The probabilities are the sigmoid of the logits, or
    their softmax for ``task="multiclass"``.
    """
    data = dataset.make_dataset(records_dir, manifest, split, batch_size, dataset.ReadSpec(
        task=task, secondary_label_weight=secondary_label_weight,
        frontend_in_model=len(model.input_shape) == 2 and not embedding_records(manifest)))
    y_true, logits = [], []
    for x, y in data:  # One pass over the records: labels and predictions stay aligned.
        logits.append(model.predict_on_batch(x))
        y_true.append(dataset.positive_targets(y, task).numpy())
    logits = np.concatenate(logits)
    probabilities = (scipy.special.softmax(logits, axis=-1) if task == "multiclass"
                     else scipy.special.expit(logits))
    return np.concatenate(y_true), probabilities


def evaluate(model: keras.Model, records_dir: str | Path, manifest: dict,
             batch_size: int, split: str = "valid", task: str = "multilabel",
             secondary_label_weight: float = 1.0, log_dir: Path | None = None,
             log_step: int = 0) -> dict:
    """``metrics.validation_metrics`` of ``model`` on a split, with ``examples``, and for
    ``multiclass`` also ``top1_accuracy``. With ``log_dir``, also writes each class's
    ROC-AUC there for TensorBoard (``write_per_class_auc``) at step ``log_step``."""
    y_true, y_score = predict_split(model, records_dir, manifest, split, batch_size, task,
                                    secondary_label_weight)
    scores = metrics.validation_metrics(y_true, y_score)
    if task == "multiclass":
        scores["top1_accuracy"] = metrics.top1_accuracy(y_true, y_score)
    scores["examples"] = len(y_true)
    if log_dir is not None:
        write_per_class_auc(log_dir, metrics.per_class_table(y_true, y_score, manifest["labels"]),
                            log_step)
    return scores


def write_per_class_auc(log_dir: Path, table, step: int) -> None:
    """TensorBoard summaries of a ``metrics.per_class_table``: the scalar
    ``per_class_auc/<label>`` of each class with a ROC-AUC, and the text ``per_class_auc``, a
    Markdown table of every class (support, ROC-AUC, AP)."""
    lines = ["| label | support | ROC-AUC | AP |", "|---|---:|---:|---:|"]
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        for row in table.itertuples():
            if not math.isnan(row.roc_auc):
                tf.summary.scalar(f"per_class_auc/{row.label}", row.roc_auc, step=step)
            lines.append(f"| {row.label} | {row.support} | {row.roc_auc:.3f} | {row.ap:.3f} |")
        tf.summary.text("per_class_auc", "\n".join(lines), step=step)


def write_input_images(log_dir: Path, labels: list[str], batches: tf.data.Dataset) -> None:
    """Writes the first batch of ``batches`` (log-mels as the model gets them, augmented) to
    TensorBoard as the images ``augmented_inputs``: mel bands upwards, frames to the right,
    each example scaled to [0, 1]. The description lists each image's targets."""
    logmels, targets = next(iter(batches))
    images = tf.reverse(tf.transpose(logmels, [0, 2, 1]), axis=[1])[..., tf.newaxis]
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    images = (images - low) / tf.maximum(high - low, 1e-6)
    described = [", ".join(f"{labels[k]} {value:.2f}" for k, value in enumerate(row) if value)
                 or "none" for row in targets.numpy()]
    description = "Augmented training log-mels (mel bands upwards). Targets: " + "; ".join(
        f"{index}: {text}" for index, text in enumerate(described))
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        tf.summary.image("augmented_inputs", images, step=0, max_outputs=len(images),
                         description=description)
