"""Training: strategy, model and optimiser in its scope, ``fit``, checkpoints, logs and scores.

A run folder ``runs/<timestamp>/`` receives:

- ``config.yaml`` (the resolved config), ``labels.txt`` and ``environment.json`` (git commit
  and package versions);
- ``checkpoints/last.keras`` (every epoch) and ``model.keras`` (the epoch with the best
  validation ROC-AUC);
- ``logs/`` for TensorBoard (with the learning rate, and profiler traces when
  ``train.profile_batch`` is set) and ``training_log.csv`` (one row per epoch);
- ``backup/`` while training runs: ``keras.callbacks.BackupAndRestore`` state at the end of
  each epoch. Rerunning the same command with the same run folder after a crash continues
  from the last finished epoch; the folder is deleted when training ends;
- ``metrics.json``: ``macro_roc_auc``, ``padded_cmap`` and ``row_f1`` of ``model.keras`` on
  the validation split.

Example:
    >>> run_dir, scores = train(cfg, records_dir="records/demo")
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
from pathlib import Path

import keras
import numpy as np
import scipy.special
import tensorflow as tf

from tfbird import config, dataset, metrics
from tfbird import labels as labels_lib
from tfbird.ingest import read_manifest
from tfbird.model import build_classifier

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.txt"
ENVIRONMENT_FILE = "environment.json"
TRAINING_LOG_FILE = "training_log.csv"
BACKUP_DIR = "backup"
ENVIRONMENT_PACKAGES = ("tensorflow", "keras", "numpy", "librosa", "soundfile")


def make_strategy(train_cfg: config.TrainConfig) -> tf.distribute.Strategy:
    """``default``: one device. ``mirrored``: every GPU, or without GPUs the CPU split into
    ``train_cfg.cpu_replicas`` logical devices, so the mirrored code path really runs."""
    if train_cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    devices = split_cpu(train_cfg.cpu_replicas)
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def split_cpu(num_devices: int) -> list[str]:
    """Splits the physical CPU into ``num_devices`` logical devices; returns their names.

    Must run before TensorFlow initialises its devices; if that already happened with enough
    logical CPUs (a test session that split the CPU at start), those are used.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
        # Each replica gets its share of the cores; all replicas sharing every core made
        # steps slower (measured: 4.2 s vs 5.0 s per ResNet50 step of 32 at 64x64, 2 cores).
        tf.config.threading.set_intra_op_parallelism_threads(
            max(1, (os.cpu_count() or 1) // num_devices))
    except RuntimeError:
        pass  # Already initialised: use what is there, checked below.
    names = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(names) < num_devices:
        raise ValueError(
            f"Cannot split the CPU into {num_devices} devices after TensorFlow initialised "
            f"with {len(names)}. Received: cpu_replicas={num_devices}")
    return names[:num_devices]


def make_run_dir(runs_dir: str | Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir) / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = Path(runs_dir) / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def build_optimizer(train_cfg: config.TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with linear warmup then cosine decay; no weight decay on biases and norms; each
    gradient clipped to ``train_cfg.clipnorm`` when set.

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
    total_steps = train_cfg.epochs * steps_per_epoch
    warmup_steps = min(int(train_cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=train_cfg.learning_rate / 100 if warmup_steps else train_cfg.learning_rate,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=train_cfg.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps, alpha=0.01)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                       weight_decay=train_cfg.weight_decay,
                                       clipnorm=train_cfg.clipnorm)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def build_loss(train_cfg: config.TrainConfig) -> keras.losses.Loss:
    """``bce``: binary cross-entropy; ``focal``: binary focal cross-entropy; both on logits."""
    if train_cfg.loss == "focal":
        return keras.losses.BinaryFocalCrossentropy(from_logits=True, gamma=train_cfg.focal_gamma)
    return keras.losses.BinaryCrossentropy(from_logits=True)


def compile_classifier(model: keras.Model, train_cfg: config.TrainConfig,
                       steps_per_epoch: int) -> None:
    """Compiles with ``build_optimizer``, ``build_loss`` and the ROC-AUC metric (call it in
    the strategy's scope)."""
    model.compile(
        optimizer=build_optimizer(train_cfg, steps_per_epoch),
        loss=build_loss(train_cfg),
        metrics=[keras.metrics.AUC(multi_label=True, from_logits=True, name="roc_auc")])


def configure_determinism(train_cfg: config.TrainConfig) -> None:
    """Seeds Python, NumPy and TensorFlow; with ``train.deterministic`` also makes every op
    deterministic (``tf.config.experimental.enable_op_determinism``)."""
    keras.utils.set_random_seed(train_cfg.seed)
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


def git_commit(folder: str | Path = Path(__file__).parent) -> str | None:
    """``git rev-parse HEAD`` in ``folder``, or ``None`` without git or a repository."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def write_environment(path: Path) -> dict:
    """Writes the git commit, the Python version and the package versions as JSON."""
    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    environment = {"git_commit": git_commit(), "python": platform.python_version(),
                   "packages": versions}
    path.write_text(json.dumps(environment, indent=2))
    return environment


def resume_state(run_dir: Path) -> tuple[int, float | None]:
    """Prepares a run folder for ``BackupAndRestore``; returns ``(epochs done, best
    val_roc_auc so far)``.

    With a backup of ``k`` finished epochs, rows of ``training_log.csv`` for epoch ``k`` or
    later (written before a crash, but not backed up) are dropped, so the epochs about to be
    rerun appear once. Without a backup, training starts again and so does the log.
    """
    metadata = run_dir / BACKUP_DIR / "training_metadata.json"
    log_path = run_dir / TRAINING_LOG_FILE
    epochs_done = json.loads(metadata.read_text())["epoch"] if metadata.is_file() else 0
    if not epochs_done or not log_path.is_file():
        log_path.unlink(missing_ok=True)
        return epochs_done, None
    with log_path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        fields = reader.fieldnames or []
        rows = [row for row in reader if int(row["epoch"]) < epochs_done]
    with log_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fields)
        writer.writeheader()
        writer.writerows(rows)
    scores = [float(row["val_roc_auc"]) for row in rows if row.get("val_roc_auc")]
    scores = [score for score in scores if not math.isnan(score)]
    return epochs_done, max(scores) if scores else None


def train(cfg: config.Config, records_dir: str | Path, run_dir: str | Path | None = None,
          progress: bool = True,
          strategy: tf.distribute.Strategy | None = None) -> tuple[Path, dict]:
    """Trains on ``records_dir`` and scores the best checkpoint on the validation split.

    Args:
        cfg: model and training settings (``cfg.train.strategy`` picks the strategy).
        records_dir: output of ``tfbird ingest`` (shards + ``manifest.json``).
        run_dir: where to write the run; default ``<train.runs_dir>/<timestamp>``.
        progress: Keras progress bars.
        strategy: default ``make_strategy(cfg.train)``; pass one made before TensorFlow
            started when other TensorFlow work runs first in this process.

    Returns:
        ``(run_dir, scores)`` with the scores also in ``run_dir/metrics.json``.
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

    run_dir = Path(run_dir) if run_dir else make_run_dir(cfg.train.runs_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(run_dir, cfg)
    config.save(cfg, run_dir / CONFIG_FILE)
    labels_lib.write_labels(labels, run_dir / LABELS_FILE)
    write_environment(run_dir / ENVIRONMENT_FILE)
    configure_determinism(cfg.train)
    epochs_done, best_score = resume_state(run_dir)
    log.info("Training on %d replica(s) (%s), %d steps per epoch, run folder %s%s",
             replicas, type(strategy).__name__, steps_per_epoch, run_dir,
             f"; resuming after epoch {epochs_done}" if epochs_done else "")

    with strategy.scope():
        model = build_classifier(cfg.model, len(labels), tuple(manifest["feature"]["shape"]))
        compile_classifier(model, cfg.train, steps_per_epoch)

    read = dict(records_dir=records_dir, manifest=manifest,
                global_batch_size=cfg.train.global_batch_size, seed=cfg.train.seed,
                shuffle_buffer_size=cfg.data.shuffle_buffer_size)
    train_data = dataset.distributed_dataset(strategy, split="train", training=True,
                                             augment=cfg.augment, **read)
    valid_data = dataset.distributed_dataset(strategy, split="valid", training=False, **read)
    # Known length: Keras then does not probe for the end (and warn "ran out of data").
    validation_steps = math.ceil(manifest["splits"]["valid"]["examples"]
                                 / cfg.train.global_batch_size) or None
    model.fit(train_data, validation_data=valid_data, epochs=cfg.train.epochs,
              steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
              callbacks=training_callbacks(run_dir, cfg.train, resumed=epochs_done > 0,
                                           best_score=best_score),
              shuffle=False,  # The input pipeline shuffles files and examples itself.
              verbose=1 if progress else 2)

    if not (run_dir / MODEL_FILE).is_file():  # val_roc_auc never defined (no positives).
        log.warning("No epoch had a validation ROC-AUC; keeping the last epoch's model.")
        model.save(run_dir / MODEL_FILE)
    best = keras.models.load_model(run_dir / MODEL_FILE)
    scores = evaluate(best, records_dir, manifest, cfg.train.global_batch_size)
    write_metrics(scores, run_dir / METRICS_FILE)
    return run_dir, scores


def write_metrics(scores: dict, path: Path) -> None:
    """JSON with ``null`` for an undefined score (NaN: e.g. no class with positives)."""
    plain = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in scores.items()}
    path.write_text(json.dumps(plain, indent=2))


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


def training_callbacks(run_dir: Path, train_cfg: config.TrainConfig = config.TrainConfig(),
                       resumed: bool = False,
                       best_score: float | None = None) -> list[keras.callbacks.Callback]:
    """Checkpoints, CSV log, TensorBoard, early stopping and the backup for resuming.

    Args:
        run_dir: the run folder.
        train_cfg: ``early_stopping_patience`` and ``profile_batch``.
        resumed: continuing a run from its backup: the CSV log is appended to.
        best_score: the best ``val_roc_auc`` before the backup, so ``model.keras`` is only
            replaced by a better epoch.
    """
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(run_dir / "checkpoints" / "last.keras"),
        keras.callbacks.ModelCheckpoint(run_dir / MODEL_FILE, monitor="val_roc_auc",
                                        mode="max", save_best_only=True,
                                        initial_value_threshold=best_score),
        keras.callbacks.CSVLogger(run_dir / TRAINING_LOG_FILE, append=resumed),
        keras.callbacks.TensorBoard(log_dir=run_dir / "logs",
                                    profile_batch=tuple(train_cfg.profile_batch or ()) or 0),
    ]
    if train_cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_roc_auc", mode="max", patience=train_cfg.early_stopping_patience))
    # Last: an epoch is backed up only after its checkpoints and log row are written.
    callbacks.append(keras.callbacks.BackupAndRestore(run_dir / BACKUP_DIR,
                                                      double_checkpoint=True))
    return callbacks


def predict_split(model: keras.Model, records_dir: str | Path, manifest: dict, split: str,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probabilities)`` of every example of a split, in record order."""
    data = dataset.make_dataset(records_dir, manifest, split, batch_size, training=False)
    y_true, logits = [], []
    for x, y in data:  # One pass over the records: labels and predictions stay aligned.
        logits.append(model.predict_on_batch(x))
        y_true.append(y.numpy())
    return np.concatenate(y_true), scipy.special.expit(np.concatenate(logits))


def evaluate(model: keras.Model, records_dir: str | Path, manifest: dict,
             batch_size: int, split: str = "valid") -> dict:
    y_true, y_score = predict_split(model, records_dir, manifest, split, batch_size)
    scores = metrics.validation_metrics(y_true, y_score)
    scores["examples"] = len(y_true)
    return scores
