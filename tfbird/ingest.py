"""Recordings -> log-mel windows -> TFRecord shards and ``manifest.json``.

The work runs as one tf.data pipeline over the file list: decode and resample each file in
parallel (``tf.numpy_function`` around soundfile + soxr, which release the GIL), cut windows and
compute log-mels in-graph with the same ``LogMelSpectrogram`` layer the exported model
carries, and prefetch while the previous file's windows are written.

Files of each split are grouped ``data.files_per_shard`` to a shard, in catalog order, and each
shard is written atomically. A file that cannot be decoded is listed with its reason in
``failures.csv`` and counted in the manifest; it never stops the run.

Example:
    >>> manifest = ingest(cfg, data="data/demo", out_dir="records/demo")
    >>> manifest["splits"]["train"]["examples"]
    612
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from tfbird import catalog, config, labels as labels_lib, records
from tfbird.frontend import build_frontend
from tfbird.waveform import cut_windows, decode_for_pipeline

MANIFEST = "manifest.json"
FAILURES = "failures.csv"
LABELS_FILE = "labels.txt"
SPLITS = ("train", "valid")


def ingest(cfg: config.Config, data: str | Path, out_dir: str | Path,
           progress: bool = True) -> dict:
    """Ingests a data set into sharded TFRecords under ``out_dir``.

    Args:
        cfg: audio, front-end and data settings.
        data: BirdCLEF folder or plain CSV (see ``tfbird.catalog``).
        out_dir: output folder; receives the shards, ``manifest.json``, ``labels.txt`` and
            ``failures.csv``.
        progress: show a progress bar.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        ValueError: unreadable data set, or more failed files than ``data.max_failures``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, labels = catalog.read_catalog(data)
    table = catalog.assign_split(table, cfg.data.validation_fraction, cfg.data.seed)
    targets = np.stack([labels_lib.to_multi_hot([p, *s], labels) for p, s in
                        zip(table["primary_label"], table["secondary_labels"])])

    failures: list[dict] = []
    splits = {}
    with tqdm(total=len(table), unit="file", desc="ingest", disable=not progress) as bar:
        for split in SPLITS:
            rows = table.index[table["split"] == split].to_numpy()
            splits[split] = write_split(cfg, table.loc[rows], targets[rows], labels, split,
                                        out_dir, failures, bar)

    manifest = build_manifest(cfg, data, labels, splits, len(failures))
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    labels_lib.write_labels(labels, out_dir / LABELS_FILE)
    write_failures(failures, out_dir / FAILURES)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    check_failures(len(failures), len(table), cfg.data.max_failures, out_dir / FAILURES)
    return manifest


def write_split(cfg: config.Config, table: pd.DataFrame, targets: np.ndarray,
                labels: list[str], split: str, out_dir: Path, failures: list[dict],
                bar: tqdm) -> dict:
    """Writes the shards of one split; returns its manifest entry."""
    files_per_shard = cfg.data.files_per_shard
    num_shards = max(1, -(-len(table) // files_per_shard))
    results = iterate_windows(table["path"].tolist(), cfg)
    shards, class_counts = [], np.zeros(targets.shape[1], np.int64)
    for shard_index in range(num_shards):
        begin, end = shard_index * files_per_shard, (shard_index + 1) * files_per_shard
        name = records.shard_name(split, shard_index, num_shards)
        with records.ShardWriter(out_dir / name) as writer:
            for row, target in zip(table.iloc[begin:end].itertuples(), targets[begin:end]):
                logmels, start_s, error = next(results)
                bar.update(1)
                if error:
                    failures.append({"path": row.path, "reason": error})
                    continue
                for logmel, start in zip(logmels, start_s):
                    writer.write(records.to_example(logmel, target, row.filename, float(start)))
                class_counts += (target > 0) * len(logmels)
        shards.append({"file": name, "examples": writer.num_examples,
                       "files": int(min(end, len(table)) - begin)})
    return {
        "shards": shards,
        "recordings": len(table),
        "examples": sum(s["examples"] for s in shards),
        "class_counts": dict(zip(labels, class_counts.tolist())),
    }


def window_dataset(paths: list[str], cfg: config.Config) -> tf.data.Dataset:
    """tf.data pipeline: path -> ``(logmel [windows, frames, mels] float16, start_s, error)``.

    Elements come in the order of ``paths`` (``deterministic=True``) while files are decoded
    and transformed in parallel. A file that fails gives no windows and its error message.
    """
    frontend = build_frontend(cfg.audio, cfg.frontend)
    sample_rate_hz = cfg.audio.sample_rate_hz

    def decode(path):
        waveform, error = tf.numpy_function(
            decode_for_pipeline, [path, sample_rate_hz], [tf.float32, tf.string],
            stateful=False)
        waveform.set_shape([None])
        error.set_shape([])
        return waveform, error

    def to_logmels(waveform, error):
        windows, start_s = cut_windows(waveform, cfg.audio)
        logmels = tf.cast(frontend(windows), tf.float16)
        return logmels, start_s, error

    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(to_logmels, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def iterate_windows(paths: list[str], cfg: config.Config):
    """Yields ``(logmels, start_s, error)`` per path as numpy values and a ``str`` error."""
    for logmels, start_s, error in window_dataset(paths, cfg).as_numpy_iterator():
        yield logmels, start_s, error.decode("utf-8")


def build_manifest(cfg: config.Config, data, labels: list[str], splits: dict,
                   num_failures: int) -> dict:
    frames = cfg.frontend.num_frames(cfg.audio.window_samples)
    return {
        "schema_version": records.SCHEMA_VERSION,
        "source": str(data),
        "audio": config.to_dict(cfg)["audio"],
        "frontend": config.to_dict(cfg)["frontend"],
        "feature": {"name": records.LOGMEL, "dtype": "float16",
                    "shape": [frames, cfg.frontend.n_mels]},
        "labels": labels,
        "split": {"validation_fraction": cfg.data.validation_fraction, "seed": cfg.data.seed,
                  "by": "recording, stratified by primary label"},
        "splits": splits,
        "failures": {"count": num_failures, "file": FAILURES},
    }


def write_failures(failures: list[dict], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "reason"])
        writer.writeheader()
        writer.writerows(failures)


def check_failures(num_failed: int, num_files: int, max_failures: float, report: Path) -> None:
    """Raises when failures exceed ``max_failures`` (a count, or a fraction if below 1)."""
    limit = max_failures * num_files if max_failures < 1 else max_failures
    if num_failed > limit:
        raise ValueError(
            f"{num_failed} of {num_files} files failed, more than data.max_failures allows; "
            f"see {report}. Received: max_failures={max_failures}")


def read_manifest(records_dir: str | Path) -> dict:
    path = Path(records_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"No {MANIFEST} in the records folder; run `tfbird ingest` first. "
                         f"Received: records={str(records_dir)!r}")
    return json.loads(path.read_text())
